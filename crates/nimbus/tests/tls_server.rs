//! `nimbus server` as an operator runs it: HTTPS with the operator's certificate files, the
//! fingerprint printed for agents, a renewal picked up on SIGHUP without a restart; `nimbus
//! agent` refuses plain HTTP to a server off loopback.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nimbus-tls-{tag}-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh self-signed pair; returns (cert PEM path, key PEM path).
fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k, _) = nimbus_api::tls::ensure_self_signed(dir, &["127.0.0.1".to_owned()]).unwrap();
    (c, k)
}

/// The server process, killed however the test ends (a leaked one would hold the test's pipes).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client_trusting(cert: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap())
        .build()
        .unwrap()
}

async fn served_to(cert: &Path, url: &str) -> bool {
    client_trusting(cert).get(url).send().await.is_ok()
}

#[tokio::test]
async fn the_operators_certificate_is_served_and_renewed_on_sighup() {
    let dir = tmp("srv");
    // File polling off, so only the signal can make the server reload.
    std::fs::write(dir.join("config.toml"), "[http]\ntls_reload_poll_ms = 3600000\n").unwrap();
    let (a_dir, b_dir) = (tmp("a"), tmp("b"));
    let (a_cert, a_key) = pair(&a_dir);
    let (b_cert, b_key) = pair(&b_dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&a_cert, &cert).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut srv = Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--data-dir")
        .arg(&dir)
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(srv.stdout.take().unwrap()).lines();
    let mut srv = Killed(srv);
    let mut fingerprint = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(f) = line.strip_prefix("certificate fingerprint (sha256): ") {
            fingerprint = f.trim().to_owned();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let a_fp = nimbus_api::tls::ServerTls::load(&a_cert, &a_key).unwrap().fingerprint();
    assert_eq!(fingerprint, a_fp, "the printed fingerprint is the served certificate's");
    assert!(!dir.join("tls").exists(), "no self-signed certificate is made when the operator gives one");

    let url = format!("https://127.0.0.1:{port}/healthz");
    let t = Instant::now();
    while !served_to(&a_cert, &url).await {
        assert!(t.elapsed() < Duration::from_secs(20), "server did not come up on HTTPS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The tenant CLI reaches it once told which certificate to trust, and not before.
    let admin = |args: &[&str]| {
        let out = Command::new(BIN).arg("admin").arg("--data-dir").arg(&dir).args(args).output().unwrap();
        assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    admin(&["org", "create", "acme"]);
    let api_key = admin(&["api-key", "create", "--org", "acme", "--permissions", "READ"]).trim().to_owned();
    let base = format!("https://127.0.0.1:{port}");
    let cli = |ca: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.args(["instance", "list", "--json"]).env("NIMBUS_URL", &base).env("NIMBUS_API_KEY", &api_key).env_remove("NIMBUS_CA_CERT");
        if let Some(ca) = ca {
            c.env("NIMBUS_CA_CERT", ca);
        }
        c.output().unwrap()
    };
    let out = cli(Some(&a_cert));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!cli(None).status.success(), "the CLI trusted a self-signed certificate it was not given");

    // The renewal lands in the files; without the signal nothing changes.
    std::fs::copy(&b_cert, &cert).unwrap();
    std::fs::copy(&b_key, &key).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(served_to(&a_cert, &url).await, "reloaded without a signal (polling is off)");
    let st = Command::new("kill").args(["-HUP", &srv.0.id().to_string()]).status().unwrap();
    assert!(st.success());
    let t = Instant::now();
    while !served_to(&b_cert, &url).await {
        assert!(t.elapsed() < Duration::from_secs(5), "SIGHUP did not load the renewed certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(srv.0.try_wait().unwrap().is_none(), "SIGHUP stopped the server");
    assert!(!served_to(&a_cert, &url).await, "the old certificate is still served");
    drop(srv);
    for d in [dir, a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_agent_refuses_plain_http_to_a_server_off_loopback() {
    let dir = tmp("agent");
    // 192.0.2.1 is a documentation address: the agent must refuse before it ever connects.
    let out = Command::new(BIN)
        .args(["agent", "--server", "http://192.0.2.1:8080", "--token", "nmbh_x", "--driver", "sim", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain HTTP"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
