//! CLI profiles: named endpoints in `~/.config/nimbus/config.toml` (or `$NIMBUS_CONFIG_DIR`,
//! `$XDG_CONFIG_HOME/nimbus`), each a base URL, a dialect and where its key comes from: an
//! environment variable or a file that only its owner may read (0600). Keys are never stored in
//! the profile file itself and never printed. `nimbus profile add|list|use|remove`;
//! `nimbus --profile NAME …` picks one for a command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProfilesFile {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub base_url: String,
    /// `lambda` or `native`: the API the instance commands speak to this endpoint; `voltage`
    /// (Voltage Park On-Demand) for an endpoint that `types --all-profiles` compares by its
    /// instant-deploy presets.
    #[serde(default = "default_dialect")]
    pub dialect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
}

fn default_dialect() -> String {
    "lambda".into()
}

pub fn config_path() -> PathBuf {
    let dir = std::env::var_os("NIMBUS_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("nimbus")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/nimbus")))
        .unwrap_or_else(|| PathBuf::from(".nimbus"));
    dir.join("config.toml")
}

pub fn load() -> anyhow::Result<ProfilesFile> {
    let p = config_path();
    match std::fs::read_to_string(&p) {
        Ok(s) => toml::from_str(&s).with_context(|| format!("{} is not a valid profiles file", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfilesFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save(f: &ProfilesFile) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = config_path();
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("toml.tmp");
    let mut out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    out.write_all(toml::to_string_pretty(f)?.as_bytes())?;
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

/// A key file must be readable by its owner only: anything else is refused, not used.
fn read_key_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("key file {} must be readable by its owner only (chmod 600 {})", path.display(), path.display());
    }
    let key = std::fs::read_to_string(path)?.trim().to_owned();
    if key.is_empty() {
        bail!("key file {} is empty", path.display());
    }
    Ok(key)
}

impl Profile {
    pub fn key(&self) -> anyhow::Result<String> {
        match (&self.api_key_env, &self.api_key_file) {
            (Some(var), _) => {
                std::env::var(var).ok().filter(|k| !k.trim().is_empty()).with_context(|| format!("environment variable {var} is not set"))
            }
            (None, Some(p)) => read_key_file(p),
            (None, None) => bail!("the profile names no key source (--key-env or --key-file)"),
        }
    }
}

/// The profile `name`, or the current one.
pub fn pick(name: Option<&str>) -> anyhow::Result<Option<(String, Profile)>> {
    let f = load()?;
    let Some(n) = name.map(str::to_owned).or(f.current.clone()) else { return Ok(None) };
    let p = f.profiles.get(&n).cloned().with_context(|| format!("no profile {n:?} in {}", config_path().display()))?;
    Ok(Some((n, p)))
}

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// Add (or replace) a profile.
    Add {
        name: String,
        #[arg(long)]
        url: String,
        /// `lambda` or `native` (what instance commands speak), or `voltage` (compared by
        /// `types --all-profiles` through its presets).
        #[arg(long, default_value = "lambda")]
        dialect: String,
        /// Read the key from this environment variable.
        #[arg(long, conflicts_with = "key_file")]
        key_env: Option<String>,
        /// Read the key from this file (it must be mode 0600).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Make it the current profile.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// The profiles (keys are never shown; only where they come from).
    List,
    /// Make a profile the current one.
    Use { name: String },
    /// Removes a profile.
    Remove { name: String },
}

pub fn run(cmd: ProfileCmd) -> anyhow::Result<()> {
    let mut f = load()?;
    match cmd {
        ProfileCmd::Add { name, url, dialect, key_env, key_file, make_current } => {
            if !matches!(dialect.as_str(), "lambda" | "native" | "voltage") {
                bail!("--dialect must be lambda, native or voltage");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must be an http(s) URL");
            }
            if key_env.is_none() && key_file.is_none() {
                bail!("give --key-env VAR or --key-file PATH (keys are not stored in the profile file)");
            }
            let key_file = key_file.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
            let p = Profile { base_url: url.trim_end_matches('/').to_owned(), dialect, api_key_env: key_env, api_key_file: key_file };
            if let Some(path) = &p.api_key_file {
                read_key_file(path)?;
            }
            f.profiles.insert(name.clone(), p);
            if make_current || f.current.is_none() {
                f.current = Some(name);
            }
            save(&f)
        }
        ProfileCmd::List => {
            println!("{:<2}{:<16} {:<32} {:<7} KEY FROM", "", "NAME", "URL", "DIALECT");
            for (n, p) in &f.profiles {
                let from = match (&p.api_key_env, &p.api_key_file) {
                    (Some(v), _) => format!("${v}"),
                    (None, Some(path)) => path.display().to_string(),
                    _ => "-".into(),
                };
                let mark = if f.current.as_deref() == Some(n.as_str()) { "*" } else { "" };
                println!("{mark:<2}{n:<16} {:<32} {:<7} {from}", p.base_url, p.dialect);
            }
            Ok(())
        }
        ProfileCmd::Use { name } => {
            if !f.profiles.contains_key(&name) {
                bail!("no profile {name:?}");
            }
            f.current = Some(name);
            save(&f)
        }
        ProfileCmd::Remove { name } => {
            if f.profiles.remove(&name).is_none() {
                bail!("no profile {name:?}");
            }
            if f.current.as_deref() == Some(name.as_str()) {
                f.current = None;
            }
            save(&f)
        }
    }
}
