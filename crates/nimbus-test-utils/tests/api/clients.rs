//! Real third-party Lambda clients from PyPI and the curl recipes of seed 000, against a live
//! server. `scripts/test` installs the clients into a venv and sets NIMBUS_TEST_PYTHON; without
//! it these tests say so and skip.

use std::path::PathBuf;
use std::process::Command;

use nimbus_test_utils::{sim_host, TestServer};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<String> {
    match std::env::var("NIMBUS_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!("SKIPPED: NIMBUS_TEST_PYTHON is not set (scripts/test sets it after installing the PyPI Lambda clients)");
            None
        }
    }
}

async fn server() -> TestServer {
    TestServer::builder().host("us-east-1", sim_host("h1", 64, 8)).host("us-west-1", sim_host("h2", 64, 0)).start().await
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_lambda_clients() {
    let Some(py) = python() else { return };
    let s = server().await;
    let script = repo_root().join("tests/lambda-clients/run.py");
    let (url, key) = (s.url.clone(), s.key.clone());
    tokio::task::spawn_blocking(move || {
        run(Command::new(py).arg(script).args(["--base-url", &url, "--api-key", &key]), "tests/lambda-clients/run.py")
    })
    .await
    .unwrap();
    s.shutdown().await;
}

/// The same clients against `nimbus server`'s HTTPS, trusting its self-signed certificate the
/// way a user would (SSL_CERT_FILE; REQUESTS_CA_BUNDLE for requests-based tools).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_lambda_clients_over_https() {
    let Some(py) = python() else { return };
    let s = TestServer::builder().tls().host("us-east-1", sim_host("h1", 64, 8)).host("us-west-1", sim_host("h2", 64, 0)).start().await;
    assert!(s.url.starts_with("https://"));
    let cert = s.tls_cert.clone().unwrap();
    let script = repo_root().join("tests/lambda-clients/run.py");
    let (url, key) = (s.url.clone(), s.key.clone());
    tokio::task::spawn_blocking(move || {
        run(
            Command::new(py)
                .arg(script)
                .args(["--base-url", &url, "--api-key", &key])
                .env("SSL_CERT_FILE", &cert)
                .env("REQUESTS_CA_BUNDLE", &cert)
                .env("CURL_CA_BUNDLE", &cert),
            "tests/lambda-clients/run.py over HTTPS",
        )
    })
    .await
    .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_curl_recipes() {
    if python().is_none() {
        return;
    }
    let s = server().await;
    let script = repo_root().join("tests/curl/seed000.sh");
    let (url, key) = (s.url.clone(), s.key.clone());
    tokio::task::spawn_blocking(move || run(Command::new("bash").arg(script).args([&url, &key]), "tests/curl/seed000.sh")).await.unwrap();
    s.shutdown().await;
}
