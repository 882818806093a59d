//! Tenant commands over the Lambda API (and the native API where Lambda has no such operation):
//! `nimbus instance|ssh-key|fs|types`. Tables by default,
//! `--json` for scripts.

use anyhow::Context;
use clap::Subcommand;
use nimbus_api_types::lambda as w;
use nimbus_client::LambdaClient;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Server root (default: the profile's, else http://127.0.0.1:8080).
    #[arg(long, env = "NIMBUS_URL", global = true)]
    pub url: Option<String>,
    #[arg(long, env = "NIMBUS_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The profile (`nimbus --profile NAME …`), set from the top-level flag.
    #[arg(skip)]
    pub profile: Option<String>,
}

/// Where a command connects: an explicit `--url`/`--api-key` (or their environment variables)
/// wins, then the named or current profile, then the local `nimbus dev` address.
pub struct Endpoint {
    pub url: String,
    pub key: Option<String>,
    pub dialect: String,
}

impl ConnArgs {
    pub fn with_profile(mut self, profile: &Option<String>) -> Self {
        self.profile = profile.clone();
        self
    }

    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let p = crate::profiles::pick(self.profile.as_deref())?;
        let key = match (&self.api_key, &p) {
            (Some(k), _) => Some(k.clone()),
            (None, Some((_, p))) => Some(p.key()?),
            (None, None) => None,
        };
        let url =
            self.url.clone().or_else(|| p.as_ref().map(|(_, p)| p.base_url.clone())).unwrap_or_else(|| "http://127.0.0.1:8080".into());
        Ok(Endpoint { url, key, dialect: p.map(|(_, p)| p.dialect).unwrap_or_else(|| "lambda".into()) })
    }

    fn url_and_key(&self) -> anyhow::Result<(String, String)> {
        let e = self.endpoint()?;
        if e.dialect == "voltage" {
            anyhow::bail!("this profile speaks the Voltage Park dialect: `nimbus types --all-profiles` compares its presets; other commands need a lambda or native profile");
        }
        let key = e.key.context("set NIMBUS_API_KEY, pass --api-key, or add a profile (nimbus profile add)")?;
        Ok((e.url, key))
    }

    fn client(&self) -> anyhow::Result<LambdaClient> {
        let (url, key) = self.url_and_key()?;
        Ok(LambdaClient::new(&url, &key))
    }

    pub(crate) fn clusters(&self) -> anyhow::Result<nimbus_client::ClustersClient> {
        let (url, key) = self.url_and_key()?;
        Ok(nimbus_client::ClustersClient::new(&url, &key))
    }

    pub(crate) fn native(&self) -> anyhow::Result<nimbus_client::NativeClient> {
        let (url, key) = self.url_and_key()?;
        Ok(nimbus_client::NativeClient::new(&url, &key))
    }
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Launches instances (`--type`, `--ssh-key`; `--wait` until they answer SSH).
    Launch {
        #[arg(long, default_value = "us-east-1")]
        region: String,
        #[arg(long = "type")]
        instance_type: String,
        /// SSH key: its name (Lambda dialect) or its id (native dialect, whose API takes ids).
        #[arg(long)]
        ssh_key: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long, default_value_t = 1)]
        quantity: i64,
        /// File with cloud-init user data.
        #[arg(long)]
        user_data: Option<std::path::PathBuf>,
        /// Wait until the instance is active and answers SSH, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// SSH into an instance as `ubuntu` (runs the system's ssh client).
    Ssh {
        id: String,
        /// Private key file (`ssh -i`).
        #[arg(long, short = 'i')]
        identity: Option<std::path::PathBuf>,
        /// Command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Lists your instances.
    List,
    /// Shows one instance.
    Get { id: String },
    /// Terminates instances (their disks go with them).
    Terminate { ids: Vec<String> },
    /// Restarts instances; their disks are kept.
    Restart { ids: Vec<String> },
    /// Power off, keeping the disk (native API).
    Stop {
        id: String,
        /// Wait until it is stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Power a stopped instance back on (native API).
    Start {
        id: String,
        /// Wait until it is running.
        #[arg(long)]
        wait: bool,
    },
    /// Change the type of a stopped instance (native API).
    Resize {
        id: String,
        #[arg(long = "type")]
        instance_type: String,
    },
}

fn instance_rows(list: &[w::Instance]) {
    println!("{:<32}  {:<24}  {:<12}  {:<20}  {:<12}  {:<15}", "ID", "NAME", "STATUS", "TYPE", "REGION", "IP");
    for i in list {
        println!(
            "{:<32}  {:<24}  {:<12}  {:<20}  {:<12}  {:<15}",
            i.id,
            i.name.as_deref().unwrap_or("-"),
            i.status,
            i.instance_type.name,
            i.region.name,
            i.ip.as_deref().unwrap_or("-")
        );
    }
}

pub async fn instance(conn: &ConnArgs, cmd: InstanceCmd) -> anyhow::Result<()> {
    let c = conn.client()?;
    match cmd {
        InstanceCmd::Launch { region, instance_type, ssh_key, name, hostname, quantity, user_data, wait }
            if conn.endpoint()?.dialect == "native" =>
        {
            let n = conn.native()?;
            let req = nimbus_api_types::native::InstanceCreate {
                name,
                instance_type,
                region,
                ssh_keys: vec![ssh_key],
                user_data: user_data.map(std::fs::read_to_string).transpose()?,
                hostname,
                ..Default::default()
            };
            // One create per instance: the native API launches one at a time, and the client
            // sends each its own idempotency key, kept across its retries.
            let mut made = Vec::new();
            for _ in 0..quantity.max(1) {
                made.push(n.instance_create(&req, None).await?);
            }
            if wait {
                for i in &mut made {
                    *i = wait_native_running(&n, &i.id).await?;
                }
            }
            native_rows(conn, &made)?;
        }
        InstanceCmd::Ssh { id, identity, command } if conn.endpoint()?.dialect == "native" => {
            let ip = conn.native()?.instance(&id).await?.ip;
            ssh_to(ip, identity, command)?;
        }
        InstanceCmd::Restart { ids } if conn.endpoint()?.dialect == "native" => {
            let n = conn.native()?;
            let mut out = Vec::new();
            for id in &ids {
                out.push(n.instance_restart(id).await?);
            }
            native_rows(conn, &out)?;
        }
        InstanceCmd::Launch { region, instance_type, ssh_key, name, hostname, quantity, user_data, wait } => {
            let user_data = user_data.map(std::fs::read_to_string).transpose()?;
            let req = w::LaunchRequest {
                region_name: region,
                instance_type_name: instance_type,
                ssh_key_names: vec![ssh_key],
                file_system_names: None,
                file_system_mounts: None,
                hostname,
                name,
                image: None,
                user_data,
                tags: None,
                firewall_rulesets: None,
                quantity: Some(quantity),
            };
            let ids = c.launch(&req).await?;
            if wait {
                for id in &ids {
                    wait_reachable(&c, id).await?;
                }
            }
            if conn.json {
                print_json(&ids)?;
            } else {
                for id in ids {
                    println!("{id}");
                }
            }
        }
        InstanceCmd::List if conn.endpoint()?.dialect == "native" => {
            let list = conn.native()?.list_all::<nimbus_api_types::native::Instance>("/instances", &Default::default()).await?;
            native_rows(conn, &list)?;
        }
        InstanceCmd::Get { id } if conn.endpoint()?.dialect == "native" => {
            let i = conn.native()?.instance(&id).await?;
            native_rows(conn, std::slice::from_ref(&i))?;
        }
        InstanceCmd::Terminate { ids } if conn.endpoint()?.dialect == "native" => {
            let n = conn.native()?;
            let mut out = Vec::new();
            for id in &ids {
                out.push(n.instance_delete(id).await?);
            }
            native_rows(conn, &out)?;
        }
        InstanceCmd::List => {
            let list = c.instances().await?;
            if conn.json {
                print_json(&list)?;
            } else {
                instance_rows(&list);
            }
        }
        InstanceCmd::Get { id } => {
            let i = c.instance(&id).await?;
            if conn.json {
                print_json(&i)?;
            } else {
                instance_rows(std::slice::from_ref(&i));
            }
        }
        InstanceCmd::Terminate { ids } => {
            let list = c.terminate(&ids).await?;
            if conn.json {
                print_json(&list)?
            } else {
                instance_rows(&list)
            }
        }
        InstanceCmd::Ssh { id, identity, command } => ssh_to(c.instance(&id).await?.ip, identity, command)?,
        InstanceCmd::Restart { ids } => {
            let list = c.restart(&ids).await?;
            if conn.json {
                print_json(&list)?
            } else {
                instance_rows(&list)
            }
        }
        InstanceCmd::Stop { id, wait } => {
            let n = conn.native()?;
            let mut i = n.instance_stop(&id).await?;
            if wait {
                i = n.wait_for_status(&id, "stopped", std::time::Duration::from_secs(300)).await?;
            }
            print_native(conn, &i)?;
        }
        InstanceCmd::Start { id, wait } => {
            let n = conn.native()?;
            let mut i = n.instance_start(&id).await?;
            if wait {
                i = n.wait_until_ready(&id, std::time::Duration::from_secs(300)).await?;
            }
            print_native(conn, &i)?;
        }
        InstanceCmd::Resize { id, instance_type } => {
            let i = conn.native()?.instance_resize(&id, &instance_type).await?;
            print_native(conn, &i)?;
        }
    }
    Ok(())
}

/// Runs the system's ssh client as `ubuntu@ip`.
fn ssh_to(ip: Option<String>, identity: Option<std::path::PathBuf>, command: Vec<String>) -> anyhow::Result<()> {
    let ip = ip.context("the instance has no address yet; wait until it is active")?;
    let mut cmd = std::process::Command::new("ssh");
    if let Some(k) = identity {
        cmd.arg("-i").arg(k);
    }
    cmd.args(["-o", "StrictHostKeyChecking=accept-new"]).arg(format!("ubuntu@{ip}")).args(command);
    let status = cmd.status().context("running ssh")?;
    if !status.success() {
        anyhow::bail!("ssh exited with {status}");
    }
    Ok(())
}

/// Progress on stderr while polling: a line per status, a dot per poll without a change.
#[derive(Default)]
struct StatusProgress {
    last: String,
}

impl StatusProgress {
    fn show(&mut self, id: &str, status: &str) {
        use std::io::Write;
        if status != self.last {
            eprint!("{}{id}: {status}", if self.last.is_empty() { "" } else { "\n" });
            self.last = status.to_owned();
        } else {
            eprint!(".");
        }
        let _ = std::io::stderr().flush();
    }
}

/// Polls a native instance until `running`, printing each status it passes through.
async fn wait_native_running(n: &nimbus_client::NativeClient, id: &str) -> anyhow::Result<nimbus_api_types::native::Instance> {
    let t = std::time::Instant::now();
    let mut progress = StatusProgress::default();
    loop {
        let i = n.instance(id).await?;
        progress.show(id, &i.status);
        match i.status.as_str() {
            "running" => {
                eprintln!(" ({:.1} s)", t.elapsed().as_secs_f64());
                return Ok(i);
            }
            "terminated" | "terminating" => {
                eprintln!();
                anyhow::bail!("instance {id} is {} while waiting for it to run", i.status);
            }
            _ if t.elapsed() > std::time::Duration::from_secs(600) => {
                eprintln!();
                anyhow::bail!("instance {id} is still {} after 10 minutes", i.status);
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

fn print_native(conn: &ConnArgs, i: &nimbus_api_types::native::Instance) -> anyhow::Result<()> {
    if conn.json {
        return print_json(i);
    }
    println!("{}  {}  {}  {} vCPU  {} GiB", i.id, i.status, i.instance_type, i.vcpus, i.memory_gib);
    Ok(())
}

#[derive(Subcommand)]
pub enum SshKeyCmd {
    /// Registers an existing public key (from a file, e.g. ~/.ssh/id_ed25519.pub).
    Add {
        name: String,
        #[arg(long)]
        public_key_file: std::path::PathBuf,
    },
    /// Generates a key pair; the private key is printed once.
    Generate { name: String },
    /// Lists your SSH keys.
    List,
    /// Deletes an SSH key (instances that have it keep it).
    Delete { id: String },
}

pub async fn ssh_key(conn: &ConnArgs, cmd: SshKeyCmd) -> anyhow::Result<()> {
    let c = conn.client()?;
    match cmd {
        SshKeyCmd::Add { name, public_key_file } => {
            let pk = std::fs::read_to_string(&public_key_file).with_context(|| format!("reading {}", public_key_file.display()))?;
            let k = c.ssh_key_add(&name, Some(pk.trim())).await?;
            if conn.json {
                print_json(&k)?
            } else {
                println!("{}\t{}", k.id, k.name)
            }
        }
        SshKeyCmd::Generate { name } => {
            let k = c.ssh_key_add(&name, None).await?;
            if conn.json {
                print_json(&k)?;
            } else {
                eprintln!("key {} ({}); private key follows, shown once:", k.id, k.name);
                print!("{}", k.private_key.unwrap_or_default());
            }
        }
        SshKeyCmd::List => {
            let keys = c.ssh_keys().await?;
            if conn.json {
                print_json(&keys)?;
            } else {
                println!("{:<32}  {:<24}  PUBLIC KEY", "ID", "NAME");
                for k in keys {
                    let short: String = k.public_key.chars().take(48).collect();
                    println!("{:<32}  {:<24}  {short}…", k.id, k.name);
                }
            }
        }
        SshKeyCmd::Delete { id } => {
            c.ssh_key_delete(&id).await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum FsCmd {
    /// Lists your file systems.
    List,
    /// Creates a file system in a region (mounted at /lambda/nfs/<name> on launch).
    Create {
        name: String,
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
    /// Deletes a file system that no instance uses.
    Delete { id: String },
}

pub async fn fs(conn: &ConnArgs, cmd: FsCmd) -> anyhow::Result<()> {
    let c = conn.client()?;
    match cmd {
        FsCmd::List => {
            let list = c.file_systems().await?;
            if conn.json {
                print_json(&list)?;
            } else {
                println!("{:<32}  {:<24}  {:<12}  {:<6}  MOUNT POINT", "ID", "NAME", "REGION", "IN USE");
                for f in list {
                    println!("{:<32}  {:<24}  {:<12}  {:<6}  {}", f.id, f.name, f.region.name, f.is_in_use, f.mount_point);
                }
            }
        }
        FsCmd::Create { name, region } => {
            let f = c.file_system_create(&name, &region).await?;
            if conn.json {
                print_json(&f)?
            } else {
                println!("{}\t{}\t{}", f.id, f.name, f.mount_point)
            }
        }
        FsCmd::Delete { id } => {
            c.file_system_delete(&id).await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

pub async fn types(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = conn.client()?;
    let t = c.instance_types().await?;
    if conn.json {
        return print_json(&t);
    }
    println!("{:<24}  {:<28}  {:>6}  {:>5}  {:>8}  {:>4}  REGIONS WITH CAPACITY", "NAME", "DESCRIPTION", "$/HR", "VCPU", "MEM GiB", "GPUS");
    for (name, e) in t {
        let it = &e.instance_type;
        let regions: Vec<&str> = e.regions_with_capacity_available.iter().map(|r| r.name.as_str()).collect();
        println!(
            "{:<24}  {:<28}  {:>6.2}  {:>5}  {:>8}  {:>4}  {}",
            name,
            it.description,
            it.price_cents_per_hour as f64 / 100.0,
            it.specs.vcpus,
            it.specs.memory_gib,
            it.specs.gpus,
            if regions.is_empty() { "-".to_owned() } else { regions.join(",") }
        );
    }
    Ok(())
}

/// Instances of the native dialect, as a table or JSON.
fn native_rows(conn: &ConnArgs, list: &[nimbus_api_types::native::Instance]) -> anyhow::Result<()> {
    if conn.json {
        return print_json(&list);
    }
    println!("{:<32}  {:<16}  {:<10}  {:<15}  TYPE", "ID", "NAME", "STATUS", "IP");
    for i in list {
        println!(
            "{:<32}  {:<16}  {:<10}  {:<15}  {}",
            i.id,
            i.name.as_deref().unwrap_or("-"),
            i.status,
            i.ip.as_deref().unwrap_or("-"),
            i.instance_type
        );
    }
    Ok(())
}

/// One table of every profile's instance types (over the Lambda dialect, which every Nimbus and
/// Lambda-compatible endpoint speaks): a profile that cannot be reached is a row saying why.
/// A Voltage Park endpoint's instant-deploy presets as rows of the merged table: the shape, the
/// hourly price of compute and disk together, and the regions of the locations that can place
/// one now.
async fn voltage_rows(name: &str, p: &crate::profiles::Profile) -> anyhow::Result<Vec<serde_json::Value>> {
    let c = nimbus_client::VoltageClient::new(&p.base_url, &p.key()?);
    let regions: std::collections::BTreeMap<String, String> =
        c.all::<nimbus_api_types::voltage::Location>("/locations/", 15).await?.into_iter().map(|l| (l.id, l.region)).collect();
    let mut rows = Vec::new();
    for preset in c.presets(None).await? {
        let r = &preset.resources;
        let gpus: i64 = r.gpus.values().map(|g| g.count).sum();
        let shape = match r.gpus.keys().next() {
            Some(model) => format!("{gpus}x {model}"),
            None => format!("{} vCPU, {} GB", r.vcpu_count, r.ram_gb),
        };
        let cents = dollars_to_cents(&preset.compute_rate_hourly)? + dollars_to_cents(&preset.storage_rate_hourly)?;
        let available: Vec<&String> = preset.location_ids_with_availability.iter().filter_map(|id| regions.get(id)).collect();
        rows.push(serde_json::json!({
            "profile": name,
            "type": shape,
            "price_cents_per_hour": cents,
            "vcpus": r.vcpu_count,
            "memory_gib": r.ram_gb,
            "gpus": gpus,
            "regions_with_capacity": available,
        }));
    }
    Ok(rows)
}

/// `"3.290000"` (dollars) → 329 cents, rounded to the nearest cent.
fn dollars_to_cents(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("not a price in dollars: {s:?}");
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micros_frac: i64 = format!("{frac:0<6}").get(..6).ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let micros =
        whole.parse::<i64>().map_err(|_| bad())?.checked_mul(1_000_000).and_then(|m| m.checked_add(micros_frac)).ok_or_else(bad)?;
    Ok((micros + 5_000) / 10_000)
}

pub async fn types_all_profiles(conn: &ConnArgs) -> anyhow::Result<()> {
    let f = crate::profiles::load()?;
    if f.profiles.is_empty() {
        anyhow::bail!("no profiles (nimbus profile add NAME --url URL --key-file PATH)");
    }
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for (name, p) in &f.profiles {
        if p.dialect == "voltage" {
            match voltage_rows(name, p).await {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(serde_json::json!({"profile": name, "error": e.to_string()})),
            }
            continue;
        }
        let got = match p.key() {
            Ok(key) => LambdaClient::new(&p.base_url, &key).instance_types().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match got {
            Ok(types) => {
                for (t, e) in types {
                    let it = &e.instance_type;
                    rows.push(serde_json::json!({
                        "profile": name,
                        "type": t,
                        "price_cents_per_hour": it.price_cents_per_hour,
                        "vcpus": it.specs.vcpus,
                        "memory_gib": it.specs.memory_gib,
                        "gpus": it.specs.gpus,
                        "regions_with_capacity": e.regions_with_capacity_available.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                    }));
                }
            }
            Err(e) => rows.push(serde_json::json!({"profile": name, "error": e.to_string()})),
        }
    }
    // Cheapest first across all endpoints, so the same shape at different prices sits together.
    rows.sort_by_key(|r| (r["price_cents_per_hour"].as_i64().unwrap_or(i64::MAX), r["profile"].as_str().unwrap_or_default().to_owned()));
    if conn.json {
        return print_json(&rows);
    }
    println!("{:<12}  {:<24}  {:>7}  {:>5}  {:>8}  {:>4}  REGIONS WITH CAPACITY", "PROFILE", "TYPE", "$/HR", "VCPU", "MEM GiB", "GPUS");
    for r in &rows {
        let profile = r["profile"].as_str().unwrap_or_default();
        if let Some(e) = r["error"].as_str() {
            println!("{profile:<12}  error: {e}");
            continue;
        }
        let regions: Vec<&str> = r["regions_with_capacity"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        println!(
            "{profile:<12}  {:<24}  {:>7.2}  {:>5}  {:>8}  {:>4}  {}",
            r["type"].as_str().unwrap_or_default(),
            r["price_cents_per_hour"].as_f64().unwrap_or(0.0) / 100.0,
            r["vcpus"],
            r["memory_gib"],
            r["gpus"],
            if regions.is_empty() { "-".to_owned() } else { regions.join(",") }
        );
    }
    Ok(())
}

/// Polls until the instance is active and its port 22 answers with an SSH banner, drawing
/// progress on stderr.
async fn wait_reachable(c: &LambdaClient, id: &str) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let mut progress = StatusProgress::default();
    loop {
        let i = c.instance(id).await?;
        progress.show(id, &i.status);
        match (i.status.as_str(), i.ip.as_deref()) {
            ("active", Some(ip)) if nimbus_core::net::is_simulated(ip) => {
                eprintln!(
                    "\n{id}: active ({:.1} s). {ip} is a sim driver's address ({}): the host only simulates instances, so nothing will answer SSH; not waiting for it.",
                    t.elapsed().as_secs_f64(),
                    nimbus_core::net::SIMULATED
                );
                return Ok(());
            }
            ("active", Some(ip)) => {
                let addr = format!("{ip}:22");
                if let Ok(Ok(mut s)) = tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(&addr)).await
                {
                    let mut buf = [0u8; 4];
                    use tokio::io::AsyncReadExt;
                    if let Ok(Ok(4)) = tokio::time::timeout(std::time::Duration::from_secs(1), s.read_exact(&mut buf)).await {
                        if &buf == b"SSH-" {
                            eprintln!("\n{id}: ssh ubuntu@{ip} answers ({:.1} s)", t.elapsed().as_secs_f64());
                            return Ok(());
                        }
                    }
                }
            }
            ("terminating" | "terminated", _) => anyhow::bail!("instance {id} is {}", i.status),
            _ => {}
        }
        if t.elapsed() > std::time::Duration::from_secs(300) {
            anyhow::bail!("instance {id} did not become reachable in 5 minutes");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::dollars_to_cents;

    #[test]
    fn dollar_strings_to_cents() {
        assert_eq!(dollars_to_cents("3.290000").unwrap(), 329);
        assert_eq!(dollars_to_cents("0.004999").unwrap(), 0);
        assert_eq!(dollars_to_cents("0.005").unwrap(), 1);
        assert_eq!(dollars_to_cents("12").unwrap(), 1200);
        for bad in ["", "-1.00", "1.2.3", "abc", "1e3", "99999999999999999999"] {
            assert!(dollars_to_cents(bad).is_err(), "{bad}");
        }
    }
}
