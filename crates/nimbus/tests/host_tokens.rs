//! The host-token and re-enrolment commands of the admin CLI, run as the binary against the
//! database of a `nimbus dev` (sim driver) that has registered its local host.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

struct Dev {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_dev() -> Dev {
    let dir = std::env::temp_dir().join(format!("nimbus-host-tokens-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(BIN)
        .args(["dev", "--driver", "sim", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nimbus dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ready = false;
    for line in lines.by_ref() {
        if line.expect("dev output").trim().starts_with("API key:") {
            ready = true;
            break;
        }
    }
    assert!(ready, "nimbus dev did not start");
    std::thread::spawn(move || for _ in lines {});
    Dev { child, dir }
}

fn admin(dev: &Dev, args: &[&str]) -> Output {
    Command::new(BIN).arg("admin").arg("--data-dir").arg(&dev.dir).args(args).output().expect("run nimbus admin")
}

fn ok(dev: &Dev, args: &[&str]) -> (String, String) {
    let out = admin(dev, args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "admin {args:?}: {stderr}");
    (stdout, stderr)
}

fn fails(dev: &Dev, args: &[&str]) -> String {
    let out = admin(dev, args);
    assert!(!out.status.success(), "admin {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn host_token_limits_and_reenrol_from_the_cli() {
    let dev = start_dev();
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
