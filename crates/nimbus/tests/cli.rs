//! The binary end to end: `nimbus dev` started as a real process, driven by the tenant CLI and
//! the admin CLI.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

struct Dev {
    child: Child,
    url: String,
    key: String,
    /// The `Console:` line's URL and the operator login link printed under it.
    console: String,
    operator_link: String,
    dir: std::path::PathBuf,
    /// With `--metrics-listen` / `--agent-metrics-listen`: the URLs it printed.
    metrics: String,
    agent_metrics: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_dev(extra: &[&str]) -> Dev {
    let dir = std::env::temp_dir().join(format!("nimbus-cli-test-{}", nimbus_core::ids::random_hex_id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(BIN)
        .args(["dev", "--driver", "sim", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(extra)
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nimbus dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut key, mut console, mut operator_link) = (String::new(), String::new(), String::new(), String::new());
    let (mut metrics, mut agent_metrics) = (String::new(), String::new());
    while let Some(Ok(line)) = lines.next() {
        if let Some(u) = line.trim().strip_prefix("URL:") {
            url = u.trim().to_owned();
        }
        if let Some(k) = line.trim().strip_prefix("API key:") {
            key = k.trim().to_owned();
        }
        // On a line of its own, from its first column.
        if let Some(m) = line.trim().strip_prefix("Metrics:") {
            metrics = m.trim().to_owned();
        }
        if let Some(m) = line.trim().strip_prefix("agent metrics on ") {
            agent_metrics = m.trim().to_owned();
        }
        if let Some(c) = line.strip_prefix("Console: ") {
            console = c.trim().to_owned();
        }
        if let Some((_, l)) = line.split_once("operator console (one use, 1 h): ") {
            operator_link = l.trim().to_owned();
            break;
        }
    }
    assert!(url.starts_with("http://127.0.0.1:") && !key.is_empty(), "dev did not print URL and key");
    assert_eq!(console, format!("{url}/console/"), "dev prints the console's URL");
    std::thread::spawn(move || for _ in lines {});
    Dev { child, url, key, console, operator_link, dir, metrics, agent_metrics }
}

/// `GET` over a plain TCP connection: the status and the raw head and body.
fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn cli(dev: &Dev, args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).env("NIMBUS_URL", &dev.url).env("NIMBUS_API_KEY", &dev.key).output().expect("run cli");
    assert!(out.status.success(), "nimbus {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn dev_and_tenant_cli() {
    let dev = start_dev(&["--api-key", "test-key-0123456789abcdef"]);
    assert_eq!(dev.key, "test-key-0123456789abcdef");
    let types = cli(&dev, &["types"]);
    assert!(types.contains("cpu_1x_small") && types.contains("us-east-1"), "{types}");

    let pk = std::env::temp_dir().join(format!("nimbus-cli-{}.pub", std::process::id()));
    std::fs::write(&pk, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host\n").unwrap();
    cli(&dev, &["ssh-key", "add", "mine", "--public-key-file", pk.to_str().unwrap()]);
    let generated = cli(&dev, &["ssh-key", "generate", "gen"]);
    assert!(generated.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{generated}");
    let keys: serde_json::Value = serde_json::from_str(&cli(&dev, &["ssh-key", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);

    let id = cli(&dev, &["instance", "launch", "--type", "cpu_1x_small", "--ssh-key", "mine", "--name", "box"]).trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let t = Instant::now();
    loop {
        let v: serde_json::Value = serde_json::from_str(&cli(&dev, &["instance", "get", &id, "--json"])).unwrap();
        if v["status"] == "active" {
            assert_eq!(v["name"], "box");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never active: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = cli(&dev, &["instance", "list"]);
    assert!(table.contains(&id) && table.contains("active"), "{table}");
    // Native-API commands: stop/resize/start with waits, volumes, billing.
    let v: serde_json::Value = serde_json::from_str(&cli(&dev, &["instance", "stop", &id, "--wait", "--json"])).unwrap();
    assert_eq!(v["status"], "stopped", "{v}");
    let v: serde_json::Value = serde_json::from_str(&cli(&dev, &["instance", "resize", &id, "--type", "cpu_2x_medium", "--json"])).unwrap();
    assert_eq!(v["vcpus"], 2, "{v}");
    let v: serde_json::Value = serde_json::from_str(&cli(&dev, &["instance", "start", &id, "--wait", "--json"])).unwrap();
    assert_eq!(v["status"], "running", "{v}");
    let vol = cli(&dev, &["volume", "create", "scratch", "--size-gib", "2"]);
    assert!(vol.contains("scratch") && vol.contains("available"), "{vol}");
    // Billing is per whole second: let the running instance accrue one.
    std::thread::sleep(Duration::from_millis(1_200));
    let usage: serde_json::Value = serde_json::from_str(&cli(&dev, &["billing", "usage", "--json"])).unwrap();
    assert!(usage["lines"].as_array().unwrap().iter().any(|l| l["resource_id"] == id.as_str()), "{usage}");
    let est = cli(&dev, &["billing", "estimate", "--type", "cpu_1x_small", "--hours", "10"]);
    assert!(est.contains("cpu_1x_small for 10 h: 0.200000 USD"), "{est}");
    let fs = cli(&dev, &["fs", "create", "data"]);
    assert!(fs.contains("/lambda/nfs/data"), "{fs}");
    cli(&dev, &["instance", "terminate", &id]);

    // Clusters: create, list, nodes, spend limit, delete. The sim host has this machine's vCPUs
    // (maybe 2) and the terminated instance gives its own back asynchronously: the cluster waits.
    let c: serde_json::Value = serde_json::from_str(&cli(
        &dev,
        &[
            "cluster",
            "create",
            "duo",
            "--dedicated",
            "us-east-1=2",
            "--machine-type",
            "cpu_1x_small",
            "--ssh-key",
            "mine",
            "--wait-for-capacity",
            "--json",
        ],
    ))
    .unwrap();
    let cid = c["id"].as_str().unwrap().to_owned();
    assert_eq!((c["name"].as_str(), c["plan"].as_str()), (Some("duo"), Some("DEDICATED")), "{c}");
    let t = Instant::now();
    while !cli(&dev, &["cluster", "list"]).contains("CREATED") {
        assert!(t.elapsed() < Duration::from_secs(20), "cluster never CREATED");
        std::thread::sleep(Duration::from_millis(100));
    }
    let nodes = cli(&dev, &["cluster", "nodes", &cid]);
    assert!(nodes.contains("duo-1") && nodes.contains("duo-2") && nodes.contains("LIVE"), "{nodes}");
    let sl = Command::new(BIN)
        .args(["cluster", "spend-limit", &cid, "100"])
        .env("NIMBUS_URL", &dev.url)
        .env("NIMBUS_API_KEY", &dev.key)
        .output()
        .unwrap();
    assert!(!sl.status.success() && String::from_utf8_lossy(&sl.stderr).contains("serverless"), "dedicated clusters have none");
    cli(&dev, &["cluster", "delete", &cid]);
    assert!(cli(&dev, &["cluster", "list", "--all"]).contains("DELETED"));

    // Bad input through the CLI is a clear error, not a crash.
    let out =
        Command::new(BIN).args(["instance", "get", "nope"]).env("NIMBUS_URL", &dev.url).env("NIMBUS_API_KEY", &dev.key).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("global/object-does-not-exist"));
    let _ = std::fs::remove_file(pk);
}

#[test]
fn admin_cli_creates_orgs_and_keys_that_work() {
    let dev = start_dev(&[]);
    let admin = |args: &[&str]| {
        let out = Command::new(BIN).arg("admin").arg("--data-dir").arg(&dev.dir).args(args).output().unwrap();
        assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    admin(&["org", "create", "acme", "--email", "ops@acme.example"]);
    let key = admin(&["api-key", "create", "--org", "acme", "--permissions", "READ"]).trim().to_owned();
    assert!(key.starts_with("nmb_"), "{key}");
    assert!(admin(&["org", "list"]).contains("acme"));
    assert!(admin(&["api-key", "list", "--org", "acme"]).contains("READ"));
    assert!(admin(&["hosts"]).contains("us-east-1"));

    // The console nimbus dev names, and operator login links: the one dev printed and one from
    // `nimbus admin console-link`, each good once.
    let (st, page) = http_get(&dev.console);
    assert!(st == 200 && page.contains("Nimbus console"), "{page}");
    let link = admin(&["console-link", "--url", &dev.url]).trim().to_owned();
    for l in [&dev.operator_link, &link] {
        assert!(l.starts_with(&format!("{}/console/login?link=nbl_", dev.url)), "{l}");
        let (st, head) = http_get(l);
        assert!(st == 303 && head.to_ascii_lowercase().contains("set-cookie: nimbus_session=nbs_"), "{head}");
        assert_eq!(http_get(l).0, 401, "a login link works once");
    }
    let as_acme = |args: &[&str]| Command::new(BIN).args(args).env("NIMBUS_URL", &dev.url).env("NIMBUS_API_KEY", &key).output().unwrap();
    let out = as_acme(&["instance", "list", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "acme sees none of the dev org's instances");
    let out = as_acme(&["ssh-key", "generate", "x"]);
    assert!(!out.status.success(), "a READ key cannot create");
    assert!(String::from_utf8_lossy(&out.stderr).contains("account-inactive"));
}

#[test]
fn service_account_cli() {
    // One argument (the other tests use two and none), so its data directory is its own.
    let dev = start_dev(&["--api-key=sa-test-key-0123456789abcdef"]);
    let created = cli(&dev, &["service-account", "create", "deployer", "--permissions", "READ,CREATE", "--description", "ci", "--json"]);
    let sa: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = sa["id"].as_str().unwrap().to_owned();
    assert_eq!(sa["permissions"], serde_json::json!(["CREATE", "READ"]), "{sa}");
    let table = cli(&dev, &["service-account", "list"]);
    assert!(table.contains(&id) && table.contains("deployer") && table.contains("CREATE,READ"), "{table}");

    // `key create` prints the secret alone, for `KEY=$(…)`.
    let secret = cli(&dev, &["service-account", "key", "create", &id, "--name", "ci"]).trim().to_owned();
    assert!(secret.starts_with("nmb_") && !secret.contains(' '), "{secret}");
    let keys: serde_json::Value = serde_json::from_str(&cli(&dev, &["service-account", "key", "list", &id, "--json"])).unwrap();
    assert_eq!(keys[0]["name"], "ci", "{keys}");
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();

    let as_sa = |args: &[&str]| Command::new(BIN).args(args).env("NIMBUS_URL", &dev.url).env("NIMBUS_API_KEY", &secret).output().unwrap();
    let out = as_sa(&["instance", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_sa(&["service-account", "list"]);
    assert!(!out.status.success(), "a CREATE,READ key cannot manage service accounts");
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&out.stderr));

    let updated = cli(&dev, &["service-account", "update", &id, "--permissions", "EDIT"]);
    assert!(updated.contains("EDIT"), "{updated}");
    assert!(!as_sa(&["instance", "list"]).status.success(), "the key follows its account's permissions");
    assert!(cli(&dev, &["service-account", "key", "delete", &id, &key_id]).contains("revoked"));
    assert!(cli(&dev, &["service-account", "delete", &id]).contains("deleted"));
    assert!(cli(&dev, &["service-account", "list", "--json"]).trim() == "[]");
}

/// Profiles: two running servers, one profile each (keys in 0600 files, never printed);
/// `nimbus --profile a types --all-profiles` prints one merged table of both.
#[test]
fn profiles_and_types_across_two_servers() {
    use std::os::unix::fs::PermissionsExt;
    let a = start_dev(&["--api-key", "profile-a-key-0123456789", "--region", "us-east-1"]);
    let b = start_dev(&[
        "--api-key",
        "profile-b-key-0123456789",
        "--region",
        "us-west-1",
        "--sim-gpus",
        "NVIDIA H100 80GB HBM3:8",
        "--sim-vcpus",
        "64",
        "--sim-memory-gib",
        "512",
        "--sim-disk-gib",
        "10000",
    ]);
    let home = std::env::temp_dir().join(format!("nimbus-profiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN).args(args).env("NIMBUS_CONFIG_DIR", &home).env_remove("NIMBUS_URL").env_remove("NIMBUS_API_KEY").output().unwrap()
    };
    for (name, dev) in [("a", &a), ("b", &b)] {
        let key = home.join(format!("{name}.key"));
        std::fs::write(&key, &dev.key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = run(&["profile", "add", name, "--url", &dev.url, "--key-file", key.to_str().unwrap()]);
        assert!(
            !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("chmod 600"),
            "a readable key file is refused"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ok = run(&["profile", "add", name, "--url", &dev.url, "--key-file", key.to_str().unwrap()]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    let list = String::from_utf8(run(&["profile", "list"]).stdout).unwrap();
    assert!(list.contains("* a") && list.contains(&b.url) && !list.contains(&a.key) && !list.contains(&b.key), "{list}");

    let out = run(&["--profile", "a", "types", "--all-profiles"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let rows_of = |p: &str| table.lines().filter(|l| l.starts_with(&format!("{p:<12}"))).count();
    assert!(rows_of("a") > 5 && rows_of("b") > 5, "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("b ") && l.contains("gpu_1x_h100_sxm5") && l.contains("us-west-1")),
        "b's H100s have capacity: {table}"
    );
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains("cpu_1x_small") && l.contains("us-east-1")), "{table}");

    // The current profile drives ordinary commands; --profile picks another.
    let types_b = String::from_utf8(run(&["--profile", "b", "types"]).stdout).unwrap();
    assert!(types_b.contains("us-west-1") && !types_b.contains("us-east-1"), "{types_b}");
    assert!(run(&["profile", "use", "b"]).status.success());
    let types_cur = String::from_utf8(run(&["types"]).stdout).unwrap();
    assert!(types_cur.contains("us-west-1"), "{types_cur}");
    // A profile may speak the native dialect: instance commands then use /v1.
    std::env::set_var("NIMBUS_TEST_PROFILE_KEY", &a.key);
    assert!(run(&["profile", "add", "n", "--url", &a.url, "--dialect", "native", "--key-env", "NIMBUS_TEST_PROFILE_KEY"]).status.success());
    let listed = run(&["--profile", "n", "instance", "list", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&listed.stdout).unwrap(), serde_json::json!([]));
    // A Voltage Park profile joins the comparison through its instant-deploy presets.
    std::env::set_var("NIMBUS_TEST_PROFILE_KEY_B", &b.key);
    assert!(run(&["profile", "add", "v", "--url", &b.url, "--dialect", "voltage", "--key-env", "NIMBUS_TEST_PROFILE_KEY_B"])
        .status
        .success());
    let merged = String::from_utf8(run(&["types", "--all-profiles"]).stdout).unwrap();
    assert!(
        merged.lines().any(|l| l.starts_with("v ") && l.contains("1x h100-80gb-hbm3") && l.contains("us-west-1")),
        "b's one-H100 preset, placeable in us-west-1: {merged}"
    );
    let refused = run(&["--profile", "v", "instance", "list"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("Voltage Park"),
        "instance commands need lambda or native"
    );
    assert!(run(&["profile", "remove", "v"]).status.success());
    let missing = run(&["--profile", "n", "instance", "get", "0123456789abcdef0123456789abcdef"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("not_found"), "the native dialect's error code");
    // Launch, wait and terminate over the native dialect (its API names SSH keys by id).
    let pk = home.join("n.pub");
    std::fs::write(&pk, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host\n").unwrap();
    assert!(run(&["--profile", "a", "ssh-key", "add", "nk", "--public-key-file", pk.to_str().unwrap()]).status.success());
    let keys: serde_json::Value = serde_json::from_slice(&run(&["--profile", "a", "ssh-key", "list", "--json"]).stdout).unwrap();
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    let launched = run(&[
        "--profile",
        "n",
        "instance",
        "launch",
        "--type",
        "cpu_1x_small",
        "--ssh-key",
        &key_id,
        "--quantity",
        "2",
        "--wait",
        "--json",
    ]);
    assert!(launched.status.success(), "{}", String::from_utf8_lossy(&launched.stderr));
    let made: serde_json::Value = serde_json::from_slice(&launched.stdout).unwrap();
    let made = made.as_array().unwrap();
    assert_eq!(made.iter().map(|i| i["status"].as_str().unwrap()).collect::<Vec<_>>(), ["running", "running"], "{made:?}");
    assert!(String::from_utf8_lossy(&launched.stderr).contains("running"), "--wait shows progress");
    let listed: serde_json::Value = serde_json::from_slice(&run(&["--profile", "n", "instance", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let by_lambda: serde_json::Value = serde_json::from_slice(&run(&["--profile", "a", "instance", "list", "--json"]).stdout).unwrap();
    assert_eq!(by_lambda.as_array().unwrap().len(), 2, "the same instances through the Lambda dialect");
    let ids: Vec<&str> = made.iter().map(|i| i["id"].as_str().unwrap()).collect();
    let gone = run(&[&["--profile", "n", "instance", "terminate"][..], &ids].concat());
    assert!(gone.status.success(), "{}", String::from_utf8_lossy(&gone.stderr));
    let bad_key = run(&["--profile", "n", "instance", "launch", "--type", "cpu_1x_small", "--ssh-key", "nk"]);
    assert!(!bad_key.status.success(), "a key name is not an id in the native dialect");
    let _ = std::fs::remove_dir_all(&home);
}

/// `nimbus host inventory` reads this machine as an agent would, without a server.
#[test]
fn host_inventory_reports_this_machine() {
    let out = Command::new(BIN).args(["host", "inventory", "--gpu-plan", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inv = &v["inventory"];
    let cores = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(inv["vcpus"].as_i64(), Some(cores), "{v}");
    assert!(inv["memory_mib"].as_i64().unwrap() > 0 && inv["disk_gib"].as_i64().unwrap() > 0, "{v}");
    if std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(!inv["gpus"].as_array().unwrap().is_empty(), "a GPU host lists its GPUs: {v}");
        assert!(v["gpu_plan"]["devices"][0].as_str().unwrap().starts_with("/dev/nvidia"), "{v}");
    } else {
        assert_eq!(inv["gpus"], serde_json::json!([]));
        assert!(v["gpu_plan"]["error"].as_str().unwrap().contains("no NVIDIA driver"), "{v}");
    }
}

fn admin_run(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("admin").arg("--data-dir").arg(&dev.dir).args(args).output().expect("run nimbus admin")
}

fn ok(dev: &Dev, args: &[&str]) -> (String, String) {
    let out = admin_run(dev, args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "admin {args:?}: {stderr}");
    (stdout, stderr)
}

fn fails(dev: &Dev, args: &[&str]) -> String {
    let out = admin_run(dev, args);
    assert!(!out.status.success(), "admin {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The host-token and re-enrolment commands of the admin CLI against the dev database.
#[test]
fn host_token_limits_and_reenrol_from_the_cli() {
    let dev = start_dev(&[]);
    let (token, note) = ok(&dev, &["host-token", "create", "--region", "us-east-1", "--uses", "3", "--ttl", "30m"]);
    assert!(token.trim().starts_with("nmbh_"), "{token}");
    assert!(note.contains("3 use(s)") && note.contains("valid until"), "{note}");
    let (token, note) = ok(&dev, &["host-token", "create", "--region", "us-east-1"]);
    assert!(token.trim().starts_with("nmbh_") && note.contains("1 use(s)"), "{note}");
    assert!(fails(&dev, &["host-token", "create", "--region", "us-east-1", "--ttl", "1w"]).contains("30m"));
    assert!(fails(&dev, &["host-token", "create", "--region", "us-east-1", "--uses", "0"]).contains("uses"));

    // `hosts` alone still lists; `hosts list` is the same table.
    let (table, _) = ok(&dev, &["hosts"]);
    assert_eq!(ok(&dev, &["hosts", "list"]).0, table);
    let host = table.lines().nth(1).and_then(|l| l.split_whitespace().next()).expect("the dev host").to_owned();
    let (token, note) = ok(&dev, &["hosts", "re-enrol", &host, "--ttl", "10m"]);
    assert!(token.trim().starts_with("nmbh_"), "{token}");
    assert!(note.contains(&host) && note.contains("revoked"), "{note}");
    fails(&dev, &["hosts", "re-enrol", "no-such-host"]);
}

/// `nimbus dev --sim-gpus/--sim-mig/--sim-gpu-faults`: H200 types show capacity by name and
/// memory, MIG types on the sim MIG devices, and a GPU that falls off the bus shows in
/// `nimbus admin hosts` with its reason.
#[test]
fn dev_sim_gpu_health_and_mig_through_the_cli() {
    let faults = std::env::temp_dir().join(format!("nimbus-cli-faults-{}.json", nimbus_core::ids::random_hex_id()));
    // The sim keeps its reset log beside the fault file; both go, pass or fail.
    let _cleanup = RemoveOnDrop(vec![faults.clone(), faults.with_extension("resets")]);
    let dev = start_dev(&[
        "--sim-gpus",
        "NVIDIA H200:2",
        "--sim-mig",
        "0:1g.18gb:7",
        "--sim-gpu-faults",
        faults.to_str().expect("utf8 path"),
        "--sim-vcpus",
        "64",
        "--sim-memory-gib",
        "512",
        "--sim-disk-gib",
        "10000",
    ]);
    let types = cli(&dev, &["types"]);
    let row = |t: &str| row_of(&types, t);
    assert!(row("gpu_1x_h200").contains("us-east-1"), "the whole H200 (GPU 1): {types}");
    assert!(row("gpu_1x_h200_1g").contains("us-east-1"), "{types}");
    assert!(!row("gpu_1x_h100_sxm5").contains("us-east-1"), "an H200 is no H100: {types}");
    assert!(!row("gpu_1x_h200_3g").contains("us-east-1"), "no 3g device was made: {types}");
    assert!(admin_run(&dev, &["hosts"]).status.success());
    std::fs::write(&faults, r#"{"1": {"xids": [79]}}"#).expect("faults");
    let t = std::time::Instant::now();
    loop {
        let (hosts, _) = ok(&dev, &["hosts"]);
        if hosts.lines().any(|l| l.contains("gpu 1 ") && l.contains("reboot_required") && l.contains("Xid 79")) {
            assert!(hosts.contains("mig 0/7 in use"), "{hosts}");
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "the lost GPU never showed: {hosts}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!row_of(&cli(&dev, &["types"]), "gpu_1x_h200").contains("us-east-1"), "the lost GPU offers no capacity");
}

struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn row_of(table: &str, t: &str) -> String {
    table.lines().find(|l| l.starts_with(&format!("{t} "))).unwrap_or_default().to_owned()
}

/// `nimbus completions bash|zsh|fish` prints a script its shell accepts, whose completions are
/// the real subcommands; a pipe closed early is no error; every subcommand has a help line.
#[test]
fn completions_complete_the_real_subcommands_and_every_subcommand_has_help() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().expect("nimbus");
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = std::env::temp_dir().join(format!("nimbus-completion-{}.bash", nimbus_core::ids::random_hex_id()));
    std::fs::write(&script, &bash.stdout).expect("script");
    // As bash calls a completion function: the words, the index of the current one, and
    // `$1 $2 $3` = command, current word, previous word.
    let complete = |words: &str| {
        let w: Vec<&str> = words.split(' ').collect();
        let n = w.len() - 1;
        let (cur, prev) = (w[n], w[n - 1]);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={n}; _nimbus nimbus {cur} {prev}; echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(Command::new("bash").arg("-n").arg(&script).status().expect("bash -n").success(), "bash parses it");
    assert_eq!(complete("nimbus inst"), "instance");
    let sub: Vec<String> = complete("nimbus instance ''").split_whitespace().map(str::to_owned).collect();
    for s in ["launch", "list", "get", "terminate", "restart", "ssh"] {
        assert!(sub.iter().any(|x| x == s), "{s} in {sub:?}");
    }
    let _ = std::fs::remove_file(&script);
    assert!(String::from_utf8_lossy(&run(&["completions", "zsh"]).stdout).starts_with("#compdef nimbus"));
    assert!(String::from_utf8_lossy(&run(&["completions", "fish"]).stdout).contains("complete -c nimbus"));
    let bad = run(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values: bash"), "{}", String::from_utf8_lossy(&bad.stderr));
    // Closed pipe: `nimbus completions bash | head -1` ends quietly.
    let mut child = Command::new(BIN).args(["completions", "bash"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&run(&["instance", "--help"]).stdout).into_owned();
    for (cmd, what) in [("launch", "Launches"), ("list", "Lists"), ("get", "Shows"), ("terminate", "Terminates")] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(cmd) && l.contains(what)), "{cmd}: {help}");
    }
}

/// CLI errors are for people: the API's status, code and message in one line and a hint,
/// never a backtrace whatever RUST_BACKTRACE says; `--debug` shows the chain.
#[test]
fn errors_print_the_api_code_and_a_hint_and_never_a_backtrace() {
    let dev = start_dev(&[]);
    let run = |key: &str, args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("NIMBUS_URL", &dev.url)
            .env("NIMBUS_API_KEY", key)
            .env("RUST_BACKTRACE", "full")
            .output()
            .expect("run cli");
        assert_eq!(out.status.code(), Some(1), "{args:?} fails with 1");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&dev.key, &["instance", "get", "0123456789abcdef0123456789abcdef"]);
    assert!(e.starts_with("error: 404 global/object-does-not-exist: "), "the Lambda code and message: {e}");
    assert!(e.contains("hint: check the id"), "{e}");
    let e = run("nmb_wrong", &["instance", "list"]);
    assert!(e.starts_with("error: 401 ") && e.contains("hint: the API key was refused"), "{e}");
    for e in [&e, &run(&dev.key, &["instance", "get", "0123456789abcdef0123456789abcdef"])] {
        assert!(!e.contains("backtrace") && !e.contains("Caused by") && e.lines().count() <= 3, "short, no backtrace: {e}");
    }
    let d = run("nmb_wrong", &["instance", "list", "--debug"]);
    assert!(d.contains("Api {") && d.contains("status: 401"), "--debug shows the whole error: {d}");
    let down =
        Command::new(BIN).args(["instance", "list"]).env("NIMBUS_URL", "http://127.0.0.1:9").env("NIMBUS_API_KEY", "k").output().unwrap();
    let e = String::from_utf8_lossy(&down.stderr);
    assert!(e.contains("hint: no answer from the server"), "{e}");
}

/// `nimbus dev --driver sim --sim-gpus "NVIDIA H100 80GB HBM3:8"` offers the H100 types, up to
/// the 8-GPU one: the sim host is sized as a server with those GPUs, not as this machine.
#[test]
fn a_sim_host_with_gpus_is_sized_to_offer_them() {
    let dev = start_dev(&["--sim-gpus", "NVIDIA H100 80GB HBM3:8"]);
    let types = cli(&dev, &["types"]);
    for t in ["gpu_1x_h100_sxm5", "gpu_8x_h100_sxm5"] {
        assert!(row_of(&types, t).contains("us-east-1"), "{t} has capacity: {types}");
    }
    assert!(!row_of(&types, "gpu_1x_h200").contains("us-east-1"), "no H200 on it: {types}");
}

/// The value of the sample `series` (name and labels exactly as exposed) in a Prometheus text
/// exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `instance launch --wait` on a sim host stops at `active` and says why (nothing will ever
/// answer SSH at a sim address), instead of waiting five minutes; `nimbus dev` serves the
/// server's and the agent's `/metrics` where asked, and they count that instance.
#[test]
fn launch_wait_on_a_sim_host_stops_at_active_and_dev_serves_metrics() {
    let dev = start_dev(&["--metrics-listen", "127.0.0.1:0", "--agent-metrics-listen", "127.0.0.1:0"]);
    assert!(
        dev.metrics.starts_with("http://127.0.0.1:") && dev.agent_metrics.starts_with("http://127.0.0.1:"),
        "{} {}",
        dev.metrics,
        dev.agent_metrics
    );
    cli(&dev, &["ssh-key", "generate", "k"]);
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["instance", "launch", "--type", "cpu_1x_small", "--ssh-key", "k", "--wait"])
        .env("NIMBUS_URL", &dev.url)
        .env("NIMBUS_API_KEY", &dev.key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "--wait took {:?}", t.elapsed());
    assert!(err.contains("active") && err.contains("198.19.") && err.contains("nothing will answer SSH"), "{err}");

    let (st, body) = http_get(&dev.metrics);
    assert_eq!(st, 200, "{body}");
    assert_eq!(sample(&body, r#"nimbus_instances{instance_type="cpu_1x_small",state="active"}"#), Some(1.0), "{body}");
    assert_eq!(sample(&body, r#"nimbus_instance_launches_total{instance_type="cpu_1x_small",result="ok"}"#), Some(1.0), "{body}");
    let (st, body) = http_get(&dev.agent_metrics);
    assert_eq!(st, 200, "{body}");
    assert_eq!(sample(&body, r#"nimbus_agent_instances{state="running"}"#), Some(1.0), "{body}");
    // The tenant listener serves no /metrics without a metrics token.
    let (st, _) = http_get(&format!("{}/metrics", dev.url));
    assert_eq!(st, 404);
}
