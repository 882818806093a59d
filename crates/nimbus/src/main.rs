//! `nimbus`: the one binary. Control plane (`server`), host agent (`agent`), both in one process
//! for laptops and CI (`dev`), operator commands (`admin`), tenant commands (`instance`,
//! `ssh-key`, `fs`, `types`, `volume`, `snapshot`, `billing`, `service-account`, `cluster`) and
//! benchmarks (`bench`).

mod admin;
mod bench;
mod bench_cluster;
mod bench_launch;
mod bench_metering;
mod bench_middleware;
mod bench_network;
mod bench_replicas;
mod bench_scale;
mod bench_tls;
mod bench_webhooks;
mod billing_cmd;
mod cluster_cmd;
mod common;
mod dev;
mod host_cmd;
mod image;
mod profiles;
mod service_account_cmd;
mod storage_cmd;
mod tenant;
mod testbed;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nimbus", version, about = "Nimbus: a self-hosted GPU cloud")]
struct Cli {
    /// A profile from ~/.config/nimbus/config.toml (`nimbus profile add`); default: the current one.
    #[arg(long, global = true, env = "NIMBUS_PROFILE")]
    profile: Option<String>,
    /// On failure, print the error's whole chain and, with RUST_BACKTRACE, where it came from.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Data directory (SQLite database, config, agent state).
    #[arg(long, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://user@host:port/db` to use PostgreSQL instead of the embedded SQLite.
    #[arg(long, env = "NIMBUS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Configuration file (TOML); defaults to `<data-dir>/config.toml` when it exists.
    #[arg(long, env = "NIMBUS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (HTTP API, scheduler, reconcilers).
    Server {
        #[arg(long, default_value = "127.0.0.1:8080", env = "NIMBUS_LISTEN")]
        listen: String,
        #[command(flatten)]
        tls: dev::ServerTlsArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run a host agent.
    Agent(dev::AgentArgs),
    /// Server plus a local agent in one process, with a dev organization and API key.
    Dev(dev::DevArgs),
    /// Operator commands (act on the database directly).
    Admin {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        cmd: admin::AdminCmd,
    },
    /// Instances (Lambda API).
    Instance {
        #[command(subcommand)]
        cmd: tenant::InstanceCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// SSH keys.
    SshKey {
        #[command(subcommand)]
        cmd: tenant::SshKeyCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Persistent file systems.
    Fs {
        #[command(subcommand)]
        cmd: tenant::FsCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Block volumes (native API).
    Volume {
        #[command(subcommand)]
        cmd: storage_cmd::VolumeCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Snapshots of instance disks and volumes (native API).
    Snapshot {
        #[command(subcommand)]
        cmd: storage_cmd::SnapshotCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Service accounts and their API keys (native API; needs an ADMIN key).
    ServiceAccount {
        #[command(subcommand)]
        cmd: service_account_cmd::ServiceAccountCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Usage, invoices and estimates (native API).
    Billing {
        #[command(subcommand)]
        cmd: billing_cmd::BillingCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Clusters (the CockroachDB-Cloud-shaped API).
    Cluster {
        #[command(subcommand)]
        cmd: cluster_cmd::ClusterCmd,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Instance types and the regions with capacity for them.
    Types {
        /// One table over every profile (their instance types and prices side by side).
        #[arg(long)]
        all_profiles: bool,
        #[command(flatten)]
        conn: tenant::ConnArgs,
    },
    /// Prints a shell completion script: `source <(nimbus completions bash)`, or save it where
    /// your shell loads completions (e.g. `nimbus completions fish > ~/.config/fish/completions/nimbus.fish`).
    Completions { shell: clap_complete::Shell },
    /// Named endpoints (URL, dialect, key source) for the tenant commands.
    Profile {
        #[command(subcommand)]
        cmd: profiles::ProfileCmd,
    },
    /// Instance images (root file systems) cached on this host.
    Image {
        #[command(subcommand)]
        cmd: image::ImageCmd,
    },
    /// This machine as a host: its inventory and GPU plans, without a server.
    Host {
        #[command(subcommand)]
        cmd: host_cmd::HostCmd,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

/// Errors are for people: the cause in one line (an API error's status, code and message) and a
/// hint, never a backtrace whatever `RUST_BACKTRACE` says; `--debug` prints everything.
fn main() -> std::process::ExitCode {
    let debug = std::env::args().any(|a| a == "--debug");
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if debug {
                eprintln!("error: {e:?}");
                if let Some(c) = e.chain().find_map(|c| c.downcast_ref::<nimbus_client::ClientError>()) {
                    eprintln!("detail: {c:?}");
                }
            } else {
                eprintln!("error: {e:#}");
                if let Some(h) = hint(&e) {
                    eprintln!("hint: {h}");
                }
                eprintln!("(--debug shows more)");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// What to try next, for the errors a user can do something about.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    use nimbus_client::ClientError as C;
    Some(match e.chain().find_map(|c| c.downcast_ref::<C>())? {
        C::Api { status: 401, .. } => "the API key was refused: check NIMBUS_API_KEY or the profile's key (`nimbus profile list`)",
        C::Api { status: 403, .. } => "the API key lacks the permission this needs (ask for a key with it)",
        C::Api { status: 404, .. } => "check the id or name (the list commands show them)",
        C::Api { status: 409, .. } => "the object is not in a state that allows this; `get` shows its state",
        C::Api { status: 429, .. } => "rate limited: wait a moment and retry",
        C::Api { status, .. } if *status >= 500 => "the server failed; its log says why",
        C::Api { .. } => "the request was refused as invalid; `--help` of the command shows its options",
        C::Transport(_) => "no answer from the server: is it running, and is NIMBUS_URL (or the profile's URL) right?",
        C::Unexpected { .. } => "the server answered something that is not a Nimbus API: is NIMBUS_URL right?",
        C::Wait { .. } => "it may still get there: `get` shows where it is",
    })
}

fn run() -> anyhow::Result<()> {
    use anyhow::Context;
    // The container launcher: a single-threaded process that must run before anything else
    // (no tokio runtime, no threads), so it may fork and change namespaces safely.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(nimbus_driver::container::runtime::LAUNCH_SUBCOMMAND) {
        std::process::exit(nimbus_driver::container::launch::main(&args[2..]));
    }
    let cli = Cli::parse();
    let profile = cli.profile.clone();
    common::init_tracing();
    if matches!(cli.cmd, Cmd::Server { .. } | Cmd::Dev(_) | Cmd::Agent(_)) {
        // Each open connection is a descriptor; the connection caps ([http]) are the limit that
        // should bite, not a soft RLIMIT_NOFILE of 1024.
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
        }
    }
    if let Cmd::Agent(a) = &cli.cmd {
        // Before any thread exists: the runtime's threads are made in the namespace.
        if let Some(ns) = &a.netns {
            nimbus_driver::container::net::enter_netns(ns).with_context(|| format!("--netns {ns}"))?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Server { listen, tls, store } => dev::run_server(&listen, &tls, &store).await,
            Cmd::Agent(a) => dev::run_agent(a).await,
            Cmd::Host { cmd } => host_cmd::run(cmd),
            Cmd::Dev(d) => dev::run_dev(d).await,
            Cmd::Admin { store, cmd } => admin::run(&store, cmd).await,
            Cmd::Instance { cmd, conn } => tenant::instance(&conn.with_profile(&profile), cmd).await,
            Cmd::SshKey { cmd, conn } => tenant::ssh_key(&conn.with_profile(&profile), cmd).await,
            Cmd::Fs { cmd, conn } => tenant::fs(&conn.with_profile(&profile), cmd).await,
            Cmd::Types { conn, all_profiles: false } => tenant::types(&conn.with_profile(&profile)).await,
            Cmd::Types { conn, all_profiles: true } => tenant::types_all_profiles(&conn).await,
            Cmd::Completions { shell } => {
                use clap::CommandFactory;
                use std::io::Write;
                // Into a buffer first: clap_complete panics on a failed write (`| head`).
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "nimbus", &mut script);
                match std::io::stdout().lock().write_all(&script) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                    _ => Ok(()),
                }
            }
            Cmd::Profile { cmd } => profiles::run(cmd),
            Cmd::Volume { cmd, conn } => storage_cmd::volume(&conn.with_profile(&profile), cmd).await,
            Cmd::Billing { cmd, conn } => billing_cmd::run(&conn.with_profile(&profile), cmd).await,
            Cmd::Cluster { cmd, conn } => cluster_cmd::run(&conn.with_profile(&profile), cmd).await,
            Cmd::ServiceAccount { cmd, conn } => service_account_cmd::run(&conn.with_profile(&profile), cmd).await,
            Cmd::Snapshot { cmd, conn } => storage_cmd::snapshot(&conn.with_profile(&profile), cmd).await,
            Cmd::Bench { cmd } => bench::run(cmd).await,
            Cmd::Image { cmd } => image::run(cmd).await,
        }
    })
}

#[cfg(test)]
mod help_tests {
    use super::*;
    use clap::CommandFactory;

    fn missing(c: &clap::Command, path: &str, out: &mut Vec<String>) {
        for s in c.get_subcommands() {
            let p = format!("{path} {}", s.get_name());
            if !s.is_hide_set() && s.get_about().is_none() {
                out.push(p.clone());
            }
            missing(s, &p, out);
        }
    }

    /// `nimbus help` and every `--help` list each subcommand with a line saying what it does.
    #[test]
    fn every_subcommand_has_a_one_line_help() {
        let mut out = Vec::new();
        missing(&Cli::command(), "nimbus", &mut out);
        assert!(out.is_empty(), "subcommands without help: {}", out.join(", "));
        Cli::command().debug_assert();
    }
}
