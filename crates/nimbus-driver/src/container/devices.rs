//! Which device nodes an instance may open, as one rule list with two enforcement backends:
//! the cgroup v1 `devices` controller (whitelist lines) and, on cgroup v2 (and on the v2 part
//! of a hybrid host), a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the instance's
//! cgroup. Both are set from the host before any process of the instance runs, in cgroups the
//! instance cannot write to; a process inside may still `mknod` (package scripts expect to),
//! but opening any node outside the list fails with `EPERM`.
//!
//! The eBPF program is assembled with rbpf's instruction builder and checked twice: its
//! verdicts by rbpf's interpreter in unit tests (every rule, every access bit), and by the
//! kernel's own verifier and hooks where a cgroup2 hierarchy is mounted (see
//! `tests/devices.rs`).

use std::path::Path;

use rbpf::insn_builder::{Arch, BpfCode, Cond, Instruction, IntoBytes, MemSize, Source};

/// `BPF_DEVCG_ACC_*`: what a process does with a node.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block = 1,
    Char = 2,
}

/// One allow rule: `None` in `major`/`minor` matches any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits allowed.
    pub access: u32,
}

impl Rule {
    pub const fn char(major: u32, minor: u32) -> Rule {
        Rule { kind: Kind::Char, major: Some(major), minor: Some(minor), access: ACC_ALL }
    }

    /// The cgroup v1 `devices.allow` line of this rule.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or_else(|| "*".to_owned(), |v| v.to_string());
        let kind = match self.kind {
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let mut acc = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!("{kind} {}:{} {acc}", n(self.major), n(self.minor))
    }

    fn matches(&self, kind: Kind, major: u32, minor: u32, access: u32) -> bool {
        self.kind == kind && self.major.is_none_or(|m| m == major) && self.minor.is_none_or(|m| m == minor) && access & !self.access == 0
    }
}

/// What every instance may use: `mknod` of anything (useless without read/write), and the
/// nodes of its private `/dev`: null, zero, full, random, urandom, tty, ptmx and its ptys.
pub fn base_rules() -> Vec<Rule> {
    vec![
        Rule { kind: Kind::Char, major: None, minor: None, access: ACC_MKNOD },
        Rule { kind: Kind::Block, major: None, minor: None, access: ACC_MKNOD },
        Rule::char(1, 3),
        Rule::char(1, 5),
        Rule::char(1, 7),
        Rule::char(1, 8),
        Rule::char(1, 9),
        Rule::char(5, 0),
        Rule::char(5, 2),
        Rule { kind: Kind::Char, major: Some(136), minor: None, access: ACC_ALL },
    ]
}

/// The base rules plus read/write of the char devices `extra` (an instance's GPUs).
pub fn rules_with(extra: &[(u32, u32)]) -> Vec<Rule> {
    let mut r = base_rules();
    r.extend(extra.iter().map(|(ma, mi)| Rule::char(*ma, *mi)));
    r
}

/// Whether `rules` allow `access` to `kind major:minor` (the semantics both backends enforce).
pub fn allowed(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u32) -> bool {
    rules.iter().any(|r| r.matches(kind, major, minor, access))
}

/// `i32` immediate of a device number (the kernel compares the 32-bit context fields; numbers
/// above `i32::MAX` cannot be device numbers, whose majors and minors are at most 20 bits).
fn imm(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// The eBPF program for `rules`: for the context `struct bpf_cgroup_dev_ctx { u32 access_type
/// /* access << 16 | type */; u32 major; u32 minor; }` it returns 1 (allow) when a rule matches,
/// else 0. Registers: r2 access bits, r3 type, r4 major, r5 minor.
pub fn program(rules: &[Rule]) -> Vec<u8> {
    let mut c = BpfCode::new();
    c.load_x(MemSize::Word).set_dst(2).set_src(1).set_off(0).push();
    c.mov(Source::Reg, Arch::X64).set_dst(3).set_src(2).push();
    c.bit_and(Source::Imm, Arch::X64).set_dst(3).set_imm(0xffff).push();
    c.right_shift(Source::Imm, Arch::X64).set_dst(2).set_imm(16).push();
    c.load_x(MemSize::Word).set_dst(4).set_src(1).set_off(4).push();
    c.load_x(MemSize::Word).set_dst(5).set_src(1).set_off(8).push();
    for r in rules {
        // Each test jumps past the rest of its block (to the next rule) when it fails.
        let tests = 2 + usize::from(r.major.is_some()) + usize::from(r.minor.is_some());
        let mut left = tests + 2; // tests, then `r0 = 1; exit`
        let mut skip = |c: &mut BpfCode, cond: Cond, dst: u8, v: i32| {
            left -= 1;
            c.jump_conditional(cond, Source::Imm).set_dst(dst).set_imm(v).set_off(left as i16).push();
        };
        skip(&mut c, Cond::NotEquals, 3, r.kind as i32);
        if let Some(m) = r.major {
            skip(&mut c, Cond::NotEquals, 4, imm(m));
        }
        if let Some(m) = r.minor {
            skip(&mut c, Cond::NotEquals, 5, imm(m));
        }
        // Any access bit the rule does not grant: not this rule.
        skip(&mut c, Cond::BitAnd, 2, imm(ACC_ALL & !r.access));
        c.mov(Source::Imm, Arch::X64).set_dst(0).set_imm(1).push();
        c.exit().push();
    }
    c.mov(Source::Imm, Arch::X64).set_dst(0).set_imm(0).push();
    c.exit().push();
    (&c).into_bytes().to_vec()
}

/// Loads the program for `rules` and attaches it to the cgroup2 directory `cgroup` (with
/// `BPF_F_ALLOW_MULTI`: programs further down the tree can only restrict further, as every
/// attached program must allow). The attachment lives as long as the cgroup.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> std::io::Result<()> {
    use super::sys;
    let prog = sys::bpf_prog_load(sys::BPF_PROG_TYPE_CGROUP_DEVICE, &program(rules), "nimbus_devices")?;
    let dir = sys::open_dir(cgroup)?;
    sys::bpf_prog_attach(&prog, &dir, sys::BPF_CGROUP_DEVICE, sys::BPF_F_ALLOW_MULTI)
}

/// How many device programs are attached to the cgroup2 directory `cgroup` itself.
pub fn attached(cgroup: &Path) -> std::io::Result<u32> {
    use super::sys;
    let dir = sys::open_dir(cgroup)?;
    sys::bpf_prog_count(&dir, sys::BPF_CGROUP_DEVICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one context in rbpf's interpreter.
    fn verdict(prog: &[u8], kind: Kind, major: u32, minor: u32, access: u32) -> u64 {
        let mut ctx = Vec::with_capacity(12);
        ctx.extend_from_slice(&((access << 16) | kind as u32).to_le_bytes());
        ctx.extend_from_slice(&major.to_le_bytes());
        ctx.extend_from_slice(&minor.to_le_bytes());
        let vm = rbpf::EbpfVmRaw::new(Some(prog)).expect("rbpf accepts the program");
        vm.execute_program(&mut ctx).expect("runs")
    }

    #[test]
    fn the_program_agrees_with_the_rules_on_every_access() {
        let rules = rules_with(&[(195, 0), (195, 255)]);
        let prog = program(&rules);
        let nodes: Vec<(Kind, u32, u32)> = vec![
            (Kind::Char, 1, 3),
            (Kind::Char, 1, 1),
            (Kind::Char, 1, 11),
            (Kind::Char, 1, 9),
            (Kind::Char, 5, 2),
            (Kind::Char, 5, 1),
            (Kind::Char, 136, 0),
            (Kind::Char, 136, 4095),
            (Kind::Char, 195, 0),
            (Kind::Char, 195, 1),
            (Kind::Char, 195, 255),
            (Kind::Char, 10, 200),
            (Kind::Block, 8, 0),
            (Kind::Block, 254, 0),
        ];
        let mut checked = 0;
        for (kind, ma, mi) in nodes {
            for access in 1..=ACC_ALL {
                let want = allowed(&rules, kind, ma, mi, access);
                assert_eq!(verdict(&prog, kind, ma, mi, access), u64::from(want), "{kind:?} {ma}:{mi} access {access}");
                checked += 1;
            }
        }
        assert_eq!(checked, 14 * 7);
        // The decisions the issue names.
        assert!(allowed(&rules, Kind::Char, 1, 3, ACC_READ | ACC_WRITE), "/dev/null");
        assert!(!allowed(&rules, Kind::Char, 1, 1, ACC_READ), "/dev/mem");
        assert!(!allowed(&rules, Kind::Block, 254, 0, ACC_READ), "the host disk");
        assert!(allowed(&rules, Kind::Block, 254, 0, ACC_MKNOD), "mknod alone is allowed");
        assert!(!allowed(&rules, Kind::Char, 195, 1, ACC_READ), "another GPU");
        assert!(allowed(&rules, Kind::Char, 195, 0, ACC_READ | ACC_WRITE), "its own GPU");
    }

    #[test]
    fn v1_lines_match_the_kernel_syntax() {
        let lines: Vec<String> = rules_with(&[(195, 3)]).iter().map(Rule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[1], "b *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[9], "c 136:* rwm");
        assert_eq!(lines.last().map(String::as_str), Some("c 195:3 rwm"));
    }
}
