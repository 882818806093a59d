//! The listeners as an attacker on the network meets them: HTTPS with a certificate agents pin,
//! renewals that drop no connection, plain HTTP refused on the HTTPS port, slow clients cut off
//! by the header, body and idle deadlines while everyone else is served, connection caps, and
//! the agent protocol on a listener of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::add_key;

fn addr_of(url: &str) -> SocketAddr {
    url.split("://").nth(1).unwrap().trim_end_matches('/').parse().unwrap()
}

/// A connection from `from` (any 127.0.0.0/8 address) to `to`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    sock.connect(to).await.unwrap()
}

/// Reads until the server closes (Ok(bytes read)) or `limit` passes (Err).
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_end_to_end_with_a_pinned_agent() {
    let s = TestServer::builder().tls().host("us-east-1", sim_host("h1", 64, 8)).start().await;
    assert!(s.url.starts_with("https://"), "{}", s.url);
    // The sim agent registered over HTTPS, trusting only the pinned fingerprint; a launch reaches
    // it and comes back active.
    add_key(&s, "k").await;
    let id = crate::launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &id, "active").await;

    let r = s.http.get(s.lambda("/instance-types")).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");

    // Plain HTTP on the HTTPS port: a readable refusal, never served.
    let mut c = TcpStream::connect(addr_of(&s.url)).await.unwrap();
    c.write_all(b"GET /api/v1/instances HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(until_closed(&mut c, Duration::from_secs(5)).await.unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https_required"), "{answer}");

    // A client that does not trust the certificate cannot talk to the server at all.
    let stranger = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let e = stranger.get(format!("{}/healthz", s.url)).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_server_whose_certificate_is_not_the_pinned_one() {
    let s = TestServer::builder().tls().start().await;
    let token = nimbus_control::admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    let dir = s.dir.0.join("wrong-pin");
    std::fs::create_dir_all(&dir).unwrap();
    for trust in [
        nimbus_agent::tls::ServerTrust::fingerprint(&"00".repeat(32)).unwrap(),
        // The Mozilla roots do not vouch for a self-signed certificate either.
        nimbus_agent::tls::ServerTrust::PublicRoots,
    ] {
        let agent = nimbus_agent::Agent::new(
            nimbus_agent::AgentConfig {
                server_url: s.agent_url.clone(),
                token: token.clone(),
                data_dir: dir.clone(),
                poll_wait: Duration::from_secs(1),
                public_ip: None,
                trust,
                insecure: false,
            },
            std::sync::Arc::new(nimbus_driver::sim::SimDriver::new(sim_host("h", 4, 0))),
        )
        .unwrap();
        let e = agent.register().await.unwrap_err();
        assert!(matches!(e, nimbus_agent::AgentError::Transport(_)), "{e:?}");
    }
    assert!(s.control.store().host_list(None, true).await.unwrap().is_empty(), "no host registered");
    s.shutdown().await;
}

fn reqwest_trusting(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_dropping_open_connections() {
    let s = TestServer::builder().tls().start().await;
    let cert = s.tls_cert.clone().unwrap();
    let old_pem = std::fs::read(&cert).unwrap();
    let old_fp = s.fingerprint().unwrap();
    let old_client = reqwest_trusting(&old_pem);
    let healthz = format!("{}/healthz", s.url);
    assert_eq!(old_client.get(&healthz).send().await.unwrap().status(), 200);

    // A renewal: a new key and certificate written over the files.
    let other = TempCert::new();
    std::fs::copy(other.key(), cert.with_extension("key")).unwrap();
    std::fs::copy(other.cert(), &cert).unwrap();
    let new_pem = std::fs::read(&cert).unwrap();
    let t = Instant::now();
    while s.fingerprint().unwrap() == old_fp {
        assert!(t.elapsed() < Duration::from_secs(10), "the renewal was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old client trusts only the old certificate, so its request can only succeed on the
    // connection it already had: the renewal dropped nothing.
    assert_eq!(old_client.get(&healthz).send().await.unwrap().status(), 200);
    // New handshakes get the new certificate.
    assert_eq!(reqwest_trusting(&new_pem).get(&healthz).send().await.unwrap().status(), 200);
    assert!(reqwest_trusting(&old_pem).get(&healthz).send().await.is_err(), "a new connection still got the old certificate");
    s.shutdown().await;
}

/// A self-signed pair in a directory of its own.
struct TempCert(std::path::PathBuf);

impl TempCert {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("nimbus-cert-{}", nimbus_core::ids::random_hex_id()));
        nimbus_api::tls::ensure_self_signed(&d, &["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        TempCert(d)
    }
    fn cert(&self) -> std::path::PathBuf {
        nimbus_api::tls::self_signed_paths(&self.0).0
    }
    fn key(&self) -> std::path::PathBuf {
        nimbus_api::tls::self_signed_paths(&self.0).1
    }
}

impl Drop for TempCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each slow client sends its request head one byte per second, from one of ten addresses.
const SLOW: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_clients_are_cut_off_while_others_are_served() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(limit >= 3 * SLOW as u64, "RLIMIT_NOFILE {limit} is too low for {SLOW} connections on both ends");
    let s = TestServer::builder().host("us-east-1", sim_host("h1", 64, 8)).start().await;
    add_key(&s, "k").await;
    let header_timeout = Duration::from_millis(s.control.config().http.header_read_timeout_ms);
    assert!(header_timeout <= Duration::from_secs(15), "the default header deadline is at most 15 s");
    let to = addr_of(&s.url);
    let start = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8);
        slow.push(tokio::spawn(async move {
            let mut c = connect_from(from, to).await;
            let head =
                b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            let opened = Instant::now();
            for b in head {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                // Closed by the server while we trickle: done.
                let mut probe = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), c.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return opened.elapsed(),
                    Ok(Ok(_)) => panic!("a slow client's trickled request was answered"),
                    Err(_) => {}
                }
            }
            panic!("a slow client sent its whole head over {:?} and was never cut off", opened.elapsed());
        }));
    }
    // All connected and trickling; now everyone else must still be served promptly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fast = reqwest::Client::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = fast.get(format!("{}/healthz", s.url)).send().await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 200);
        assert!(took < Duration::from_millis(100), "/healthz took {took:?} beside {SLOW} slow clients");
    }
    let t = Instant::now();
    let (st, v) = s
        .call(
            &s.key,
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k"]})),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(st, 200, "{v}");
    assert!(took < Duration::from_millis(100), "a launch took {took:?} beside {SLOW} slow clients");

    let mut worst = Duration::ZERO;
    for h in slow {
        worst = worst.max(h.await.unwrap());
    }
    assert!(worst < Duration::from_secs(20), "the last slow client was cut off after {worst:?}");
    assert!(worst >= header_timeout - Duration::from_millis(500), "cut off before the deadline: {worst:?}");
    eprintln!("{SLOW} slow clients all closed within {worst:?} (header deadline {header_timeout:?}); whole test {:?}", start.elapsed());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_and_an_idle_connection_are_closed() {
    let s = TestServer::builder()
        .config(|c| {
            c.http.body_read_timeout_ms = 1_000;
            c.http.idle_timeout_ms = 1_000;
        })
        .start()
        .await;
    let to = addr_of(&s.url);
    // A body promised and never sent: the request fails in the handler's dialect, the
    // connection closes, both soon after the body deadline.
    let mut c = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "POST /api/v1/ssh-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        s.key
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let answer = String::from_utf8(until_closed(&mut c, Duration::from_secs(5)).await.expect("not closed")).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A keep-alive connection left idle after its request closes after the idle window (the
    // header deadline, 10 s, is not what cuts it).
    let mut c = TcpStream::connect(to).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let t = Instant::now();
    let answer = String::from_utf8(until_closed(&mut c, Duration::from_secs(5)).await.expect("idle connection not closed")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_client_address_and_in_all() {
    let s = TestServer::builder()
        .config(|c| {
            c.http.max_connections_per_ip = 4;
            c.http.max_connections = 6;
        })
        .start()
        .await;
    let to = addr_of(&s.url);
    let a = Ipv4Addr::new(127, 0, 0, 21);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(a, to).await);
    }
    // The fifth from the same address is answered 503 and closed; another address still gets in.
    let mut fifth = connect_from(a, to).await;
    let answer = String::from_utf8(until_closed(&mut fifth, Duration::from_secs(5)).await.unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let b = Ipv4Addr::new(127, 0, 0, 22);
    for _ in 0..2 {
        let mut c = connect_from(b, to).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    // Six open in all: a third address is refused too.
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 23), to).await;
    let answer = String::from_utf8(until_closed(&mut c, Duration::from_secs(5)).await.unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Closing frees the places.
    held.clear();
    let t = Instant::now();
    loop {
        let mut c = connect_from(a, to).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        if c.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "places were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_plane_can_have_a_listener_of_its_own() {
    let s = TestServer::builder().agent_listener().host("us-east-1", sim_host("h1", 8, 0)).start().await;
    assert_ne!(s.url, s.agent_url);
    // The agent registered through its listener; the tenant listener has no agent routes, the
    // agent listener no tenant routes.
    assert_eq!(s.control.store().host_list(None, true).await.unwrap().len(), 1);
    let r = s.http.post(format!("{}/internal/agent/v1/register", s.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.get(format!("{}/api/v1/instances", s.agent_url)).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.get(format!("{}/api/v1/instances", s.url)).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}
