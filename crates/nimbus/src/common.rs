//! Shared start-up plumbing: logging, data dir, config and store opening.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use nimbus_control::{Config, Control};
use nimbus_core::clock::SystemClock;
use nimbus_store::Store;

use crate::StoreArgs;

pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// `/var/lib/nimbus/<suffix>` for root, `~/.local/share/nimbus/<suffix>` for anyone else.
/// Root's home is 0700: an unprivileged instance's launcher, which runs as the instance's own
/// uid range, could not traverse it to reach the instance's directories.
pub fn default_data_dir(suffix: &str) -> PathBuf {
    if nimbus_driver::container::inventory::is_root() {
        return PathBuf::from("/var/lib/nimbus").join(suffix);
    }
    let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    base.join(".local/share/nimbus").join(suffix)
}

pub fn data_dir(args: &StoreArgs, suffix: &str) -> anyhow::Result<PathBuf> {
    let d = args.data_dir.clone().unwrap_or_else(|| default_data_dir(suffix));
    std::fs::create_dir_all(&d).with_context(|| format!("creating data dir {}", d.display()))?;
    Ok(d)
}

pub fn load_config(args: &StoreArgs, data_dir: &std::path::Path) -> anyhow::Result<Config> {
    let path = args.config.clone().or_else(|| Some(data_dir.join("config.toml")).filter(|p| p.exists()));
    match path {
        Some(p) => {
            let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&s).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
        None => Ok(Config::default()),
    }
}

pub fn database_url(args: &StoreArgs, data_dir: &std::path::Path) -> String {
    args.database_url.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("nimbus.db").display()))
}

pub async fn open_control(args: &StoreArgs, suffix: &str, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<(Control, PathBuf)> {
    let dir = data_dir(args, suffix)?;
    let mut cfg = load_config(args, &dir)?;
    tweak(&mut cfg);
    let url = database_url(args, &dir);
    let store = Store::connect(&url).await.map_err(|e| anyhow::anyhow!("opening database: {e}"))?;
    let control = Control::new(store, Arc::new(SystemClock), cfg).await.map_err(|e| anyhow::anyhow!("starting control plane: {e}"))?;
    Ok((control, dir))
}
