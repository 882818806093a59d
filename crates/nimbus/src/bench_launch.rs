//! `nimbus bench launch`: what a client of the Lambda API sees on the container driver, timed
//! the way SkyPilot and dstack wait: launch → `status: active` (polled every 10 ms) → the first
//! `ssh ubuntu@ip true` that succeeds; then terminate → no process, namespace, cgroup or
//! directory left. Phases:
//!
//! 1. sequential launch/terminate rounds on an otherwise empty host;
//! 2. the same with `--busy` instances running, so that each launch reuses the address the
//!    previous round freed (the case that used to meet a stale neighbour entry);
//! 3. `--batch` instances in one launch request, until all are active and all answer SSH.
//!
//! With `--lxd PATH`, the LXD peer benchmark (`shared/peers/lxd_launch_bench.sh`) runs right
//! after, in the same invocation, with the same round and batch counts, and its figures are
//! printed beside ours. The server, a real `nimbus agent` process and the instances share the
//! machine, as they would on a single-host install.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nimbus_api_types::lambda as w;
use nimbus_control::config::RateLimits;
use nimbus_control::{admin, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::SystemClock;
use nimbus_store::Store;

use crate::bench::pct;

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Sequential rounds per phase.
    #[arg(long, default_value_t = 20)]
    launches: usize,
    /// Instances kept running during the second phase (0: no second phase).
    #[arg(long, default_value_t = 30)]
    busy: usize,
    /// Instances in the batch phase's one launch request (0: no batch phase).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// The instance type launched: `cpu_1x_small_vm` measures the VM driver (TCG where KVM
    /// does not boot a guest; `nimbus image build --vm` first).
    #[arg(long = "type", default_value = "cpu_1x_small")]
    instance_type: String,
    /// Run the LXD peer benchmark at this path after ours (as root; it installs LXD).
    #[arg(long)]
    lxd: Option<PathBuf>,
    #[command(flatten)]
    images: crate::image::ImagesDir,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ssh_true(key: &Path, ip: &str) -> bool {
    std::process::Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=2"])
        .arg(format!("ubuntu@{ip}"))
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One round's figures.
#[derive(Default)]
struct Series {
    active: Vec<Duration>,
    ssh: Vec<Duration>,
    gone: Vec<Duration>,
    first_ssh_tries: Vec<u32>,
}

impl Series {
    fn row(&self, phase: &str) {
        let mut a = self.active.clone();
        let mut s = self.ssh.clone();
        let mut g = self.gone.clone();
        a.sort();
        s.sort();
        g.sort();
        let line = |what: &str, v: &[Duration]| {
            println!("| {phase} | {what} | {} | {:.0} | {:.0} | {:.0} |", v.len(), ms(pct(v, 0.5)), ms(pct(v, 0.95)), ms(pct(v, 1.0)));
        };
        line("launch → `active`", &a);
        line("launch → `active` → first successful `ssh ubuntu@ip true`", &s);
        line("terminate → nothing left on the host", &g);
        let retried = self.first_ssh_tries.iter().filter(|t| **t > 1).count();
        if retried > 0 {
            println!("| {phase} | rounds whose first SSH after `active` failed | {retried} | | | |");
        }
    }
}

struct Bench {
    client: nimbus_client::LambdaClient,
    key: PathBuf,
    dir: PathBuf,
    req: w::LaunchRequest,
}

impl Bench {
    /// Left behind by instance `id`: its namespace, cgroup or directory.
    fn gone(&self, id: &str) -> bool {
        let short = &id[..12];
        !Path::new(&format!("/run/netns/nimbus-{short}")).exists()
            && !Path::new(&format!("/sys/fs/cgroup/memory/nimbus/{id}")).exists()
            && !Path::new(&format!("/sys/fs/cgroup/nimbus/{id}")).exists()
            && !self.dir.join("agent/container/instances").join(id).exists()
            && !Path::new("/run/nimbus-vm").join(id).exists()
    }

    async fn wait_active(&self, ids: &[String], t0: Instant, limit: Duration) -> anyhow::Result<Vec<(String, Duration)>> {
        let mut out: Vec<(String, Duration)> = Vec::new();
        while out.len() < ids.len() {
            for inst in self.client.instances().await? {
                if ids.contains(&inst.id) && inst.status == "active" && !out.iter().any(|(i, _)| *i == inst.id) {
                    out.push((inst.id.clone(), t0.elapsed()));
                }
            }
            if t0.elapsed() > limit {
                bail!("only {}/{} instances became active within {limit:?}", out.len(), ids.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(out)
    }

    async fn ip(&self, id: &str) -> anyhow::Result<String> {
        self.client.instance(id).await?.ip.context("an active instance without an address")
    }

    /// Runs `ssh true` until it succeeds; the number of tries.
    async fn ssh_until_ok(&self, ip: &str, t0: Instant) -> anyhow::Result<u32> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (k, ip2) = (self.key.clone(), ip.to_owned());
            if tokio::task::spawn_blocking(move || ssh_true(&k, &ip2)).await? {
                return Ok(tries);
            }
            if t0.elapsed() > Duration::from_secs(90) {
                bail!("{ip} never answered ssh");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn terminate(&self, ids: &[String]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.client.terminate(ids).await?;
        loop {
            let all = self.client.instances().await?;
            let done = ids.iter().all(|id| !all.iter().any(|i| i.id == *id && i.status != "terminated") && self.gone(id));
            if done {
                return Ok(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("instances {ids:?} were not cleaned up");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn rounds(&self, n: usize) -> anyhow::Result<Series> {
        let mut s = Series::default();
        for _ in 0..n {
            let t0 = Instant::now();
            let id = self.client.launch(&self.req).await?.pop().context("no instance id")?;
            let active = self.wait_active(std::slice::from_ref(&id), t0, Duration::from_secs(60)).await?[0].1;
            let ip = self.ip(&id).await?;
            let tries = self.ssh_until_ok(&ip, t0).await?;
            s.active.push(active);
            s.ssh.push(t0.elapsed());
            s.first_ssh_tries.push(tries);
            s.gone.push(self.terminate(&[id]).await?);
        }
        Ok(s)
    }

    async fn launch_many(&self, n: usize) -> anyhow::Result<(Vec<String>, Instant)> {
        let t0 = Instant::now();
        let mut req = self.req.clone();
        req.quantity = Some(i64::try_from(n)?);
        Ok((self.client.launch(&req).await?, t0))
    }
}

pub async fn run(a: LaunchArgs) -> anyhow::Result<()> {
    let images_dir = a.images.path();
    let d = images_dir.clone();
    tokio::task::spawn_blocking(move || crate::image::ensure_default(&d, "debian-12", None)).await??;
    let dir = crate::bench::temp_dir("launch")?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display());
    let cfg = Config { rate_limits: RateLimits::generous(), ..Config::default() };
    let store = Store::connect(&url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = Control::new(store, Arc::new(SystemClock), cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let org = admin::org_create(&control, "bench", None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = admin::host_token_create(&control, "us-east-1").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = nimbus_api::server::start(control.clone(), tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    // The agent is a real separate process (with the default 5 s heartbeat: readiness must not
    // wait for it), so its memory can be measured on its own.
    let agent_log = std::fs::File::create(dir.join("agent.log"))?;
    let room = (a.busy + a.batch).max(4);
    let mut agent = tokio::process::Command::new(std::env::current_exe()?)
        .args(["agent", "--server", &server.url(), "--token", &token, "--data-dir"])
        .arg(dir.join("agent"))
        .arg("--images-dir")
        .arg(&images_dir)
        .args(["--offer-vcpus", &(room * 2).to_string(), "--offer-memory-gib", &(room * 2).to_string()])
        .args(["--offer-disk-gib", &(room * 20).to_string()])
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()?;
    let agent_pid = agent.id().context("agent pid")?;
    let t = Instant::now();
    while control.store().host_list(None, true).await.map_err(|e| anyhow::anyhow!("{e}"))?.is_empty() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the agent did not register; see {}", dir.join("agent.log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keyfile = dir.join("id");
    if !std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&keyfile).status()?.success() {
        bail!("ssh-keygen failed");
    }
    let client = nimbus_client::LambdaClient::new(&server.url(), &key);
    client.ssh_key_add("bench", Some(std::fs::read_to_string(keyfile.with_extension("pub"))?.trim())).await?;
    let req = w::LaunchRequest {
        region_name: "us-east-1".into(),
        instance_type_name: a.instance_type.clone(),
        ssh_key_names: vec!["bench".into()],
        file_system_names: None,
        file_system_mounts: None,
        hostname: None,
        name: None,
        image: None,
        user_data: None,
        tags: None,
        firewall_rulesets: None,
        quantity: Some(1),
    };
    let b = Bench { client, key: keyfile, dir: dir.clone(), req };

    println!(
        "nimbus bench launch: {} ({}, unprivileged), {} rounds per phase, {} busy, batch of {}",
        a.instance_type,
        if a.instance_type.ends_with("_vm") { "VM driver" } else { "container driver" },
        a.launches,
        a.busy,
        a.batch
    );
    // One uncounted warm-up round (page cache, first nft table, first cgroups).
    b.rounds(1).await?;
    let empty = b.rounds(a.launches).await?;

    let busy = if a.busy > 0 { Some(busy_phase(&b, &a, agent_pid).await?) } else { None };
    let batch = if a.batch > 0 { Some(batch_phase(&b, a.batch).await?) } else { None };

    println!();
    println!("| phase | measure | n | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    empty.row("empty host");
    if let Some(busy) = busy {
        busy.row(&format!("{} running", a.busy));
    }
    if let Some((all_active, all_ssh, batch_gone)) = batch {
        println!("| batch of {} (one request) | all `active` | 1 | {:.0} | | |", a.batch, ms(all_active));
        println!("| batch of {} (one request) | all answer `ssh ubuntu@ip true` | 1 | {:.0} | | |", a.batch, ms(all_ssh));
        println!("| batch of {} (one request) | terminate → nothing left | 1 | {:.0} | | |", a.batch, ms(batch_gone));
    }

    agent.kill().await?;
    server.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(script) = a.lxd {
        println!();
        println!("LXD peer ({}), same machine, same run:", script.display());
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .env("RUNS", a.launches.to_string())
            .env("BATCH", a.batch.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .await?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!("the LXD benchmark failed: {}", out.status);
        }
    }
    Ok(())
}

/// Phase 2: `a.busy` instances running while the sequential rounds run again.
async fn busy_phase(b: &Bench, a: &LaunchArgs, agent_pid: u32) -> anyhow::Result<Series> {
    let (busy_ids, t0) = b.launch_many(a.busy).await?;
    b.wait_active(&busy_ids, t0, Duration::from_secs(120)).await?;
    let t_busy = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kib = crate::bench::rss_kib(agent_pid)?;
    let busy = b.rounds(a.launches).await?;
    let t = b.terminate(&busy_ids).await?;
    println!(
        "{} instances launched in one request: all active after {:.2} s; terminated and cleaned in {:.2} s",
        a.busy,
        t_busy.as_secs_f64(),
        t.as_secs_f64()
    );
    println!("agent RSS with {} instances running: {:.1} MiB", a.busy, kib as f64 / 1024.0);

    Ok(busy)
}

/// Phase 3: `n` instances in one request; (all active, all answer SSH, all cleaned up).
async fn batch_phase(b: &Bench, n: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    let (ids, t0) = b.launch_many(n).await?;
    let active = b.wait_active(&ids, t0, Duration::from_secs(60)).await?;
    let all_active = active.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let mut handles = Vec::new();
    for id in &ids {
        let ip = b.ip(id).await?;
        let k = b.key.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            while !ssh_true(&k, &ip) {
                if t0.elapsed() > Duration::from_secs(90) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(t0.elapsed())
        }));
    }
    let mut all_ssh = Duration::ZERO;
    for h in handles {
        all_ssh = all_ssh.max(h.await?.context("a batch instance never answered ssh")?);
    }
    let batch_gone = b.terminate(&ids).await?;

    Ok((all_active, all_ssh, batch_gone))
}
