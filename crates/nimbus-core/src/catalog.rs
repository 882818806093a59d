//! The catalog: regions and instance types an operator offers, and the capacity arithmetic that
//! decides whether a request fits a host.

use serde::{Deserialize, Serialize};

/// Lambda's public region codes. Real Lambda clients refuse any other region name, in requests and
/// in responses, so Nimbus regions must be named from this list.
pub const LAMBDA_REGION_CODES: [&str; 17] = [
    "asia-northeast-1",
    "asia-northeast-2",
    "asia-south-1",
    "australia-east-1",
    "europe-central-1",
    "me-west-1",
    "us-east-1",
    "us-east-2",
    "us-east-3",
    "us-midwest-1",
    "us-midwest-2",
    "us-south-1",
    "us-south-2",
    "us-south-3",
    "us-west-1",
    "us-west-2",
    "us-west-3",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    pub description: String,
    pub gpu_description: String,
    pub price_cents_per_hour: i64,
    pub vcpus: i64,
    pub memory_gib: i64,
    pub storage_gib: i64,
    pub gpus: i64,
    /// Substring that a host GPU's model name must contain (case-insensitive), e.g. `H100`.
    /// Empty for CPU-only types.
    #[serde(default)]
    pub gpu_model: String,
    /// Memory each of its GPUs must have at least, in GiB (as NVML reports the total), so that a
    /// name shared by several memory sizes (`H200`, `H100 NVL`) matches only the one sold.
    /// 0: any.
    #[serde(default)]
    pub gpu_memory_gib: i64,
    /// When set, each of its `gpus` is a MIG device of this profile (e.g. `1g.18gb`) on a GPU
    /// matching `gpu_model`, one that an operator created; empty: whole GPUs. Nimbus never
    /// changes MIG mode or a GPU's partitioning itself.
    #[serde(default)]
    pub mig_profile: String,
    /// Instances of this type run without a user namespace: root inside is root on the host.
    /// Off by default; an operator turns it on per type, for tenants they trust, and the
    /// agent logs every such start (docs/security.md).
    #[serde(default)]
    pub privileged: bool,
    /// What its instances run as on a host: a container (the default) or a virtual machine.
    /// It is placed only on hosts whose agent says it can run that ([`crate::model::Host::runs`]).
    #[serde(default)]
    pub machine: Machine,
}

/// What an instance is on its host: a Linux container or a virtual machine (QEMU). The agent
/// protocol has its own copy; the control plane maps between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Container,
    Vm,
}

impl Machine {
    pub const ALL: [Machine; 2] = [Machine::Container, Machine::Vm];

    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Container => "container",
            Machine::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Option<Machine> {
        Machine::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl InstanceType {
    /// What each of its GPUs must be.
    pub fn gpu_want(&self) -> GpuWant<'_> {
        GpuWant { model: &self.gpu_model, min_memory_mib: self.gpu_memory_gib.saturating_mul(1024) }
    }

    pub fn resources(&self) -> Resources {
        Resources { vcpus: self.vcpus, memory_mib: self.memory_gib * 1024, disk_gib: self.storage_gib }
    }
}

/// Scalar resources of a host or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.vcpus <= free.vcpus && self.memory_mib <= free.memory_mib && self.disk_gib <= free.disk_gib
    }

    pub fn minus(&self, o: &Resources) -> Resources {
        Resources { vcpus: self.vcpus - o.vcpus, memory_mib: self.memory_mib - o.memory_mib, disk_gib: self.disk_gib - o.disk_gib }
    }
}

/// What a GPU must be to serve a request: its NVML name must match `model` (see
/// [`gpu_model_matches`]) and its memory be at least `min_memory_mib`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuWant<'a> {
    pub model: &'a str,
    pub min_memory_mib: i64,
}

impl GpuWant<'_> {
    pub fn accepts(&self, model: &str, memory_mib: i64) -> bool {
        gpu_model_matches(self.model, model) && memory_mib >= self.min_memory_mib
    }
}

/// True when a host GPU model name (as NVML reports it, e.g. `NVIDIA A100-SXM4-40GB`) satisfies an
/// instance type's pattern: every token of the pattern must equal a token of the model name,
/// ignoring case and punctuation. Whole tokens, so that `A10` never matches an `A100`.
pub fn gpu_model_matches(pattern: &str, host_model: &str) -> bool {
    let tokens = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect()
    };
    let host = tokens(host_model);
    let want = tokens(pattern);
    !want.is_empty() && want.iter().all(|t| host.contains(t))
}

/// A MIG profile name as NVML prints it: `<n>g.<m>gb`, optionally with a `+me`/`+gfx`-style
/// suffix (`1g.18gb+me`), e.g. `1g.18gb`, `3g.71gb`, `7g.141gb`.
pub fn valid_mig_profile(p: &str) -> bool {
    let (core, suffix) = match p.split_once('+') {
        Some((c, s)) => (c, Some(s)),
        None => (p, None),
    };
    let Some((g, mem)) = core.split_once("g.") else { return false };
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    digits(g)
        && mem.strip_suffix("gb").is_some_and(digits)
        && suffix.is_none_or(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_matching_ignores_case_and_punctuation() {
        assert!(gpu_model_matches("H100 HBM3", "NVIDIA H100 80GB HBM3"));
        assert!(!gpu_model_matches("H100-HBM3", "NVIDIA H100 PCIe"));
        assert!(gpu_model_matches("h100 pcie", "NVIDIA H100 PCIe"));
        assert!(gpu_model_matches("a100", "NVIDIA A100-SXM4-40GB"));
        assert!(!gpu_model_matches("A10", "NVIDIA H100"));
        assert!(!gpu_model_matches("H200", "NVIDIA GH200 144G HBM3e"), "GH200 is not an H200");
    }

    #[test]
    fn machines_round_trip_by_name() {
        for m in Machine::ALL {
            assert_eq!(Machine::parse(m.as_str()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), serde_json::Value::String(m.as_str().to_owned()));
        }
        assert_eq!(Machine::parse("VM"), None);
        assert_eq!(Machine::default(), Machine::Container);
    }

    #[test]
    fn mig_profiles() {
        for ok in ["1g.18gb", "7g.141gb", "1g.18gb+me", "2g.35gb"] {
            assert!(valid_mig_profile(ok), "{ok}");
        }
        for bad in ["", "1g", "g.18gb", "1g.gb", "1g.18GB", "1g.18gb+", "1g.18gb+m e", "../1g.18gb"] {
            assert!(!valid_mig_profile(bad), "{bad}");
        }
    }

    #[test]
    fn gpu_wants_check_memory_too() {
        let h200 = GpuWant { model: "H200", min_memory_mib: 130 * 1024 };
        assert!(h200.accepts("NVIDIA H200", 143_771));
        assert!(h200.accepts("NVIDIA H200 NVL", 143_771));
        assert!(!h200.accepts("NVIDIA H200", 81_559), "memory below the type's");
        assert!(!h200.accepts("NVIDIA H100 80GB HBM3", 143_771), "the name still has to match");
        assert!(GpuWant { model: "H100", min_memory_mib: 0 }.accepts("NVIDIA H100 PCIe", 81_559));
    }
}
