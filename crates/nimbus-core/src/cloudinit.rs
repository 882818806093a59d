//! `user_data`: a shell script (`#!…`) or a `#cloud-config` document, validated at launch and
//! turned into one first-boot shell script that the instance runs with its output in
//! `/var/log/cloud-init-output.log`.
//!
//! Supported cloud-config keys: `write_files` (path, content, encoding `b64`/`base64`,
//! permissions, owner, append), `users` (`default`, or name, groups, shell, sudo,
//! ssh_authorized_keys), `ssh_authorized_keys` (added to the default user `ubuntu`), `packages`
//! (apt-get install, after `apt-get update`), `bootcmd` and `runcmd` (strings run by `sh -c`,
//! lists run as argument vectors), `chpasswd.users` (name + `password`, `type` `hash` (a crypt
//! string) or `text`) and `ssh_pwauth` (password logins over SSH; read by the driver before
//! sshd starts). Other keys are accepted and listed as ignored in the script's log, as
//! cloud-init itself warns about unknown keys.

use base64::Engine as _;
use serde::Deserialize;

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WriteFile {
    pub path: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub append: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum User {
    Default(String),
    Spec {
        name: String,
        #[serde(default)]
        groups: Option<String>,
        #[serde(default)]
        shell: Option<String>,
        #[serde(default)]
        sudo: Option<String>,
        #[serde(default)]
        ssh_authorized_keys: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PasswordEntry {
    pub name: String,
    pub password: String,
    /// `hash` (a crypt(3) string such as `$6$…`) or `text`; cloud-init's default is `hash`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Chpasswd {
    #[serde(default)]
    pub users: Vec<PasswordEntry>,
    /// Accepted for compatibility; passwords set here never expire at first login.
    #[serde(default)]
    pub expire: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CloudConfig {
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub bootcmd: Vec<Command>,
    #[serde(default)]
    pub runcmd: Vec<Command>,
    #[serde(default)]
    pub chpasswd: Option<Chpasswd>,
    #[serde(default)]
    pub ssh_pwauth: Option<bool>,
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    Script(String),
    CloudConfig(CloudConfig),
}

fn bad(msg: impl Into<String>) -> Error {
    Error::invalid("user_data", msg)
}

fn safe_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// Parses and checks user data; the error says what is wrong, for the launch to be refused.
pub fn parse(s: &str) -> Result<UserData, Error> {
    if s.starts_with("#!") {
        return Ok(UserData::Script(s.to_owned()));
    }
    if !s.starts_with("#cloud-config") {
        return Err(bad("must start with #! (a script) or #cloud-config"));
    }
    let cfg: CloudConfig =
        serde_norway::from_str::<Option<CloudConfig>>(s).map_err(|e| bad(format!("invalid #cloud-config: {e}")))?.unwrap_or_default();
    for f in &cfg.write_files {
        if !f.path.starts_with('/') || f.path.contains('\0') {
            return Err(bad(format!("write_files path {:?} must be absolute", f.path)));
        }
        if let Some(p) = &f.permissions {
            if u32::from_str_radix(p.trim_start_matches("0o"), 8).is_err() {
                return Err(bad(format!("write_files permissions {p:?} must be octal like '0644'")));
            }
        }
        match f.encoding.as_deref() {
            None | Some("text/plain") => {}
            Some("b64") | Some("base64") => {
                base64::engine::general_purpose::STANDARD
                    .decode(f.content.trim())
                    .map_err(|_| bad(format!("write_files {}: content is not valid base64", f.path)))?;
            }
            Some(other) => return Err(bad(format!("write_files encoding {other:?} is not supported (use b64 or none)"))),
        }
    }
    for u in &cfg.users {
        match u {
            User::Default(d) if d == "default" => {}
            User::Default(d) => return Err(bad(format!("users entry {d:?}: only \"default\" may be a plain string"))),
            User::Spec { name, .. } if !safe_name(name) => return Err(bad(format!("user name {name:?} is not a valid login name"))),
            User::Spec { .. } => {}
        }
    }
    for e in cfg.chpasswd.iter().flat_map(|c| &c.users) {
        if !safe_name(&e.name) {
            return Err(bad(format!("chpasswd user {:?} is not a valid login name", e.name)));
        }
        match e.kind.as_deref() {
            None | Some("hash") if !e.password.starts_with('$') || e.password.contains([':', '\n', '\'', ' ']) => {
                return Err(bad(format!("chpasswd password of {} must be a crypt hash such as $6$…", e.name)));
            }
            None | Some("hash") => {}
            Some("text") if e.password.is_empty() || e.password.contains(['\n', '\0']) => {
                return Err(bad(format!("chpasswd password of {} must be one non-empty line", e.name)));
            }
            Some("text") => {}
            Some(other) => return Err(bad(format!("chpasswd type {other:?} is not supported (use hash or text)"))),
        }
    }
    for p in &cfg.packages {
        if !p.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.:=~".contains(&c)) || p.is_empty() {
            return Err(bad(format!("package name {p:?} is not valid")));
        }
    }
    Ok(UserData::CloudConfig(cfg))
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn command_line(c: &Command) -> String {
    match c {
        Command::Shell(s) => format!("sh -c {}", sh_quote(s)),
        Command::Argv(v) => v.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" "),
    }
}

/// The first-boot script for a cloud-config: every step runs and reports its exit status, as
/// cloud-init's modules do; a failing `runcmd` does not stop the others.
pub fn to_script(cfg: &CloudConfig) -> String {
    let mut s = String::from("#!/bin/sh\n# Generated by Nimbus from #cloud-config.\nstep() { echo \"nimbus-cloud-init: $*\"; }\n");
    for k in cfg.other.keys() {
        s += &format!("step {}\n", sh_quote(&format!("ignoring unsupported key {k}")));
    }
    for c in &cfg.bootcmd {
        s += &format!("step bootcmd; {} || step \"bootcmd failed: $?\"\n", command_line(c));
    }
    for f in &cfg.write_files {
        let bytes = match f.encoding.as_deref() {
            Some("b64") | Some("base64") => base64::engine::general_purpose::STANDARD.decode(f.content.trim()).unwrap_or_default(),
            _ => f.content.clone().into_bytes(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let p = sh_quote(&f.path);
        let redirect = if f.append { ">>" } else { ">" };
        s += &format!("step write_files {p}; mkdir -p \"$(dirname {p})\" && printf %s {} | base64 -d {redirect} {p}\n", sh_quote(&b64));
        if let Some(m) = &f.permissions {
            s += &format!("chmod {} {p}\n", sh_quote(m.trim_start_matches("0o")));
        }
        if let Some(o) = &f.owner {
            s += &format!("chown {} {p}\n", sh_quote(o));
        }
    }
    let key_lines = |user: &str, keys: &[String], s: &mut String| {
        if keys.is_empty() {
            return;
        }
        let u = sh_quote(user);
        *s += &format!("h=$(getent passwd {u} | cut -d: -f6); mkdir -p \"$h/.ssh\"\n");
        for k in keys {
            *s += &format!("printf '%s\\n' {} >> \"$h/.ssh/authorized_keys\"\n", sh_quote(k.trim()));
        }
        *s += &format!("chmod 700 \"$h/.ssh\"; chmod 600 \"$h/.ssh/authorized_keys\"; chown -R {u}: \"$h/.ssh\"\n");
    };
    for u in &cfg.users {
        if let User::Spec { name, groups, shell, sudo, ssh_authorized_keys } = u {
            let n = sh_quote(name);
            s += &format!(
                "step users {n}; id -u {n} >/dev/null 2>&1 || useradd --create-home --shell {} {n}\n",
                sh_quote(shell.as_deref().unwrap_or("/bin/bash"))
            );
            s += &format!("usermod --password '*' {n}\n");
            if let Some(g) = groups {
                for g in g.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                    s += &format!("usermod -aG {} {n} || step \"no group {}\"\n", sh_quote(g), g.replace('"', ""));
                }
            }
            if let Some(rule) = sudo {
                s += &format!(
                    "printf '%s %s\\n' {n} {} > /etc/sudoers.d/90-cloud-init-{name}; chmod 440 /etc/sudoers.d/90-cloud-init-{name}\n",
                    sh_quote(rule)
                );
            }
            key_lines(name, ssh_authorized_keys, &mut s);
        }
    }
    key_lines("ubuntu", &cfg.ssh_authorized_keys, &mut s);
    for e in cfg.chpasswd.iter().flat_map(|c| &c.users) {
        let n = sh_quote(&e.name);
        s += &format!("step chpasswd {n}\n");
        s += &match e.kind.as_deref() {
            Some("text") => format!("printf '%s:%s\\n' {n} {} | chpasswd\n", sh_quote(&e.password)),
            _ => format!("usermod --password {} {n}\n", sh_quote(&e.password)),
        };
    }
    if !cfg.packages.is_empty() {
        let pkgs: Vec<String> = cfg.packages.iter().map(|p| sh_quote(p)).collect();
        s += &format!(
            "step packages; export DEBIAN_FRONTEND=noninteractive; (apt-get update && apt-get install -y {}) || step \"packages failed: $?\"\n",
            pkgs.join(" ")
        );
    }
    for c in &cfg.runcmd {
        s += &format!("step runcmd; {} || step \"runcmd failed: $?\"\n", command_line(c));
    }
    s += "step done\n";
    s
}

/// Whether `user_data` asks for password logins over SSH (`ssh_pwauth: true`).
pub fn wants_password_ssh(user_data: &str) -> bool {
    matches!(parse(user_data), Ok(UserData::CloudConfig(CloudConfig { ssh_pwauth: Some(true), .. })))
}

/// Merges a password for the default user `ubuntu` (a crypt hash) into `user_data`, which may
/// be absent, a `#cloud-config` document or a script; the result is one `#cloud-config`
/// document (a script becomes a file that `runcmd` runs, so it still runs once, last). SSH
/// password logins are switched on, as a user who sets a password expects to log in with it.
pub fn with_default_password(user_data: Option<&str>, crypt_hash: &str) -> Result<String, Error> {
    let mut doc: serde_json::Map<String, serde_json::Value> = match user_data.map(parse).transpose()? {
        None => serde_json::Map::new(),
        Some(UserData::Script(script)) => {
            let path = "/var/lib/nimbus/user-data-script";
            let mut m = serde_json::Map::new();
            m.insert("write_files".into(), serde_json::json!([{"path": path, "content": script, "permissions": "0700"}]));
            m.insert("runcmd".into(), serde_json::json!([[path]]));
            m
        }
        Some(UserData::CloudConfig(_)) => {
            let v: serde_json::Value = serde_norway::from_str::<Option<serde_json::Value>>(user_data.unwrap_or_default())
                .map_err(|e| bad(format!("invalid #cloud-config: {e}")))?
                .unwrap_or(serde_json::Value::Null);
            match v {
                serde_json::Value::Object(m) => m,
                serde_json::Value::Null => serde_json::Map::new(),
                _ => return Err(bad("#cloud-config must be a mapping")),
            }
        }
    };
    if doc.contains_key("chpasswd") {
        return Err(bad("give either a password or chpasswd in the cloud-config, not both"));
    }
    doc.insert(
        "chpasswd".into(),
        serde_json::json!({"expire": false, "users": [{"name": "ubuntu", "password": crypt_hash, "type": "hash"}]}),
    );
    doc.insert("ssh_pwauth".into(), serde_json::Value::Bool(true));
    // YAML is a superset of JSON: the merged mapping is written as JSON after the header.
    let out = format!("#cloud-config\n{}\n", serde_json::Value::Object(doc));
    parse(&out)?;
    Ok(out)
}

/// The first-boot script for any user data (a script is used as it is).
pub fn first_boot_script(user_data: &str) -> Result<String, Error> {
    Ok(match parse(user_data)? {
        UserData::Script(s) => s,
        UserData::CloudConfig(c) => to_script(&c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_cloud_config_parse_junk_is_refused() {
        assert!(matches!(parse("#!/bin/bash\necho hi\n"), Ok(UserData::Script(_))));
        assert!(parse("echo hi").is_err());
        assert!(parse("#cloud-config\nruncmd: [").is_err(), "broken YAML");
        assert!(parse("#cloud-config\nruncmd: 5\n").is_err(), "wrong type");
        assert!(parse("#cloud-config\nwrite_files:\n  - path: relative\n").is_err());
        assert!(parse("#cloud-config\nwrite_files:\n  - path: /x\n    permissions: '99z'\n").is_err());
        assert!(parse("#cloud-config\npackages: ['rm -rf /']\n").is_err());
        assert!(parse("#cloud-config\nusers: [root!]\n").is_err());
        assert!(matches!(parse("#cloud-config\n"), Ok(UserData::CloudConfig(_))));
    }

    #[test]
    fn cloud_config_becomes_a_script() {
        let ud = "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: \"it's here\\n\"\n    permissions: '0600'\nruncmd:\n  - echo one > /tmp/one\n  - [touch, /tmp/two words]\ntimezone: UTC\n";
        let UserData::CloudConfig(c) = parse(ud).expect("valid") else { panic!("not cloud-config") };
        let s = to_script(&c);
        assert!(s.contains("step runcmd; sh -c 'echo one > /tmp/one'"), "{s}");
        assert!(s.contains("'touch' '/tmp/two words'"), "{s}");
        assert!(s.contains("chmod '0600' '/etc/motd'"), "{s}");
        assert!(s.contains("ignoring unsupported key timezone"), "{s}");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn passwords_merge_into_any_user_data() {
        let h = "$6$salt$abc/def";
        let plain = with_default_password(None, h).expect("merged");
        assert!(wants_password_ssh(&plain), "{plain}");
        let UserData::CloudConfig(c) = parse(&plain).expect("valid") else { panic!("not cloud-config") };
        assert!(to_script(&c).contains("usermod --password '$6$salt$abc/def' 'ubuntu'"), "{}", to_script(&c));

        let cc = with_default_password(Some("#cloud-config\nruncmd: [touch /tmp/x]\n"), h).expect("merged");
        let UserData::CloudConfig(c) = parse(&cc).expect("valid") else { panic!("not cloud-config") };
        assert_eq!(c.runcmd.len(), 1, "the user's runcmd is kept");

        let sc = with_default_password(Some("#!/bin/sh\necho hi\n"), h).expect("merged");
        let UserData::CloudConfig(c) = parse(&sc).expect("valid") else { panic!("not cloud-config") };
        assert_eq!((c.write_files[0].content.as_str(), c.runcmd.len()), ("#!/bin/sh\necho hi\n", 1), "the script still runs");

        assert!(with_default_password(Some("#cloud-config\nchpasswd: {users: []}\n"), h).is_err(), "two sources of passwords");
        assert!(!wants_password_ssh("#cloud-config\nruncmd: []\n"));
        assert!(parse("#cloud-config\nchpasswd: {users: [{name: ubuntu, password: plain}]}\n").is_err(), "hash expected");
        assert!(parse("#cloud-config\nchpasswd: {users: [{name: ubuntu, password: plain, type: text}]}\n").is_ok());
    }
}
