//! Egress policy for requests to destinations a tenant chose (today: webhook receivers). Owns
//! the one classifier of addresses the server must not be made to call (`forbidden`), the
//! checking DNS resolver that applies it at connect time, and `Egress`, the HTTP client that
//! every such request must go through.
//!
//! The check is made on the address the connection is opened to, in the manner of Stripe's
//! Smokescreen: a host name is resolved once, inside reqwest's connector, by `CheckingResolver`,
//! which drops every refused address and hands reqwest only those it checked. So a name that
//! resolves (or is re-bound between two lookups) to 127.0.0.1 never reaches a socket, and there
//! is no second lookup whose answer could differ from the checked one. reqwest does not call the
//! resolver for IP literals, so `Egress::send` checks those itself with the same classifier.
//! Redirects are never followed (a 3xx is the receiver's answer) and no proxy is used (a proxy
//! would resolve the name itself, out of reach of the check).
//!
//! This module decides nothing about what a tenant is told: callers map `EgressError` to their
//! own fixed messages, so that a refused address reads like any other failed connection.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused as a destination. The names are for server-side logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// `0.0.0.0`, `::`: connecting to it reaches this machine.
    Unspecified,
    /// `0.0.0.0/8`, "this network" (RFC 791).
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598); also hosts some providers' metadata.
    SharedAddressSpace,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// The cloud instance-metadata service: `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
    /// `192.0.0.0/24` and `2001::/23` (IETF protocol assignments: Teredo, ORCHID, …).
    IetfProtocol,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4`, the deprecated 6to4 relay anycast `192.88.99/24`, and all of IPv6 outside
    /// global unicast `2000::/3` not named otherwise (`100::/64`, `fec0::/10`, NAT64 local-use).
    Reserved,
    /// `fc00::/7` (RFC 4193).
    UniqueLocal,
}

const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// `Some(reason)` when a tenant-chosen request must not go to `ip`; `None` for ordinary public
/// unicast addresses. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4)
/// are judged by the IPv4 address they reach.
pub fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    use Forbidden::*;
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == METADATA_V4 => Metadata,
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_broadcast() => Broadcast,
        (0, _, _) => ThisNetwork,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (127, _, _) => Loopback,
        (169, 254, _) => LinkLocal,
        (192, 0, 0) => IetfProtocol,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (192, 88, 99) => Reserved,
        (198, 18..=19, _) => Benchmarking,
        (224..=239, _, _) => Multicast,
        (240..=255, _, _) => Reserved,
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    use Forbidden::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if ip == METADATA_V6 {
        return Some(Metadata);
    }
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => UniqueLocal,
        x if x & 0xffc0 == 0xfe80 => LinkLocal,
        x if x & 0xff00 == 0xff00 => Multicast,
        // Only 2000::/3 is allocated for global unicast; the rest is reserved or special-use.
        x if x & 0xe000 != 0x2000 => Reserved,
        0x2001 if s[1] == 0x0db8 => Documentation,
        0x3fff if s[1] & 0xf000 == 0 => Documentation,
        0x2001 if s[1] == 0x0002 && s[2] == 0 => Benchmarking,
        0x2001 if s[1] < 0x0200 => IetfProtocol,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address reaches when it is one of the forms that embed one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated, but a stack may still
/// route it), NAT64 `64:ff9b::a.b.c.d`, and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => None,
    }
}

/// A name whose every address was refused (or an IP literal that was).
#[derive(Debug, Clone)]
pub struct Refused {
    pub host: String,
    pub addrs: Vec<(IpAddr, Forbidden)>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused by the egress policy:", self.host)?;
        for (ip, why) in &self.addrs {
            write!(f, " {ip} ({why:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// The resolver underneath the check: the system's (`getaddrinfo`) unless another is installed,
/// e.g. a `FakeResolver` in tests. Whatever it is, `Egress` wraps it in `CheckingResolver`.
#[derive(Clone, Default)]
pub struct BaseResolver(Option<Arc<dyn Resolve>>);

impl BaseResolver {
    pub fn new(r: Arc<dyn Resolve>) -> Self {
        BaseResolver(Some(r))
    }

    fn get(&self) -> Arc<dyn Resolve> {
        self.0.clone().unwrap_or_else(|| Arc::new(SystemResolver))
    }
}

impl fmt::Debug for BaseResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "BaseResolver(custom)" } else { "BaseResolver(system)" })
    }
}

/// `getaddrinfo` on a blocking thread, as reqwest's own default resolver does.
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A test double: answers the names it was given and fails every other lookup, so that a test
/// never sends a query to a real DNS server.
#[derive(Debug, Clone, Default)]
pub struct FakeResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl FakeResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// `name` resolves to `addrs` (lower-cased, as DNS names compare).
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> Self {
        self.names.insert(name.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

impl Resolve for FakeResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.names.get(&name.as_str().to_ascii_lowercase()).cloned();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match found {
                Some(ips) => Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect::<Vec<_>>().into_iter()) as Addrs),
                None => Err(format!("FakeResolver: no such host {host}").into()),
            }
        })
    }
}

/// Resolves through `base` and lets only permitted addresses through; when none is left the
/// lookup fails with `Refused`, which reqwest reports as a connect error.
pub struct CheckingResolver {
    base: Arc<dyn Resolve>,
    allow_private: bool,
}

impl CheckingResolver {
    /// `allow_private` turns the refusal off (development, tests); the base is still used.
    pub fn new(base: Arc<dyn Resolve>, allow_private: bool) -> Self {
        CheckingResolver { base, allow_private }
    }
}

impl Resolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = self.base.resolve(name);
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            if allow_private {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.into_iter().partition(|a| forbidden(a.ip()).is_none());
            let refused: Vec<(IpAddr, Forbidden)> = refused.iter().filter_map(|a| forbidden(a.ip()).map(|f| (a.ip(), f))).collect();
            if ok.is_empty() {
                return Err(Box::new(Refused { host, addrs: refused }) as _);
            }
            if !refused.is_empty() {
                // A mix of public and refused answers is odd (rebinding attempts look like it);
                // only the public ones are dialled.
                tracing::warn!(%host, ?refused, "egress: dropped refused addresses from a DNS answer");
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

/// Why a request through `Egress` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An IP-literal destination refused before any connection was tried.
    #[error("destination refused by the egress policy")]
    Refused(#[source] Refused),
    /// Anything reqwest reports, including a name whose addresses `CheckingResolver` refused.
    #[error("request failed")]
    Transport(#[source] reqwest::Error),
}

impl EgressError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, EgressError::Transport(e) if e.is_timeout())
    }

    /// The policy refusal behind this error, wherever it was made.
    pub fn refused(&self) -> Option<&Refused> {
        use std::error::Error as _;
        let mut src: Option<&(dyn std::error::Error + 'static)> = self.source();
        while let Some(e) = src {
            if let Some(r) = e.downcast_ref::<Refused>() {
                return Some(r);
            }
            src = e.source();
        }
        None
    }

    /// The whole cause chain, for server-side logs.
    pub fn chain(&self) -> String {
        use std::error::Error as _;
        let mut msg = self.to_string();
        let mut src = self.source();
        while let Some(e) = src {
            msg.push_str(": ");
            msg.push_str(&e.to_string());
            src = e.source();
        }
        msg
    }
}

/// The HTTP client for tenant-chosen destinations. Send every request with `send`, which checks
/// IP literals; names are checked by the client's resolver.
#[derive(Clone)]
pub struct Egress {
    http: reqwest::Client,
    allow_private: bool,
}

impl Egress {
    /// Builds the client from `builder` (timeouts, user agent, …), overriding what the policy
    /// needs: no redirects, no proxy, and `CheckingResolver` over `base`.
    pub fn new(builder: reqwest::ClientBuilder, allow_private: bool, base: &BaseResolver) -> Result<Egress, reqwest::Error> {
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver::new(base.get(), allow_private)))
            .build()?;
        Ok(Egress { http, allow_private })
    }

    /// A POST to `url`, to be sent with `send`.
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.post(url)
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, EgressError> {
        let req = rb.build().map_err(EgressError::Transport)?;
        if !self.allow_private {
            check_literal(req.url()).map_err(EgressError::Refused)?;
        }
        self.http.execute(req).await.map_err(EgressError::Transport)
    }
}

/// Refuses a URL whose host is a forbidden IP literal. The host string is the URL parser's
/// normalized form (dotted IPv4, bracketed IPv6), which is what hyper parses to decide that it
/// need not resolve, so a host is either checked here or handed to the resolver.
fn check_literal(url: &reqwest::Url) -> Result<(), Refused> {
    let host = url.host_str().unwrap_or("");
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>().ok().and_then(|ip| forbidden(ip).map(|f| (ip, f))) {
        Some(hit) => Err(Refused { host: host.to_owned(), addrs: vec![hit] }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Forbidden::*;

    fn why(s: &str) -> Option<Forbidden> {
        forbidden(s.parse().expect("an IP address"))
    }

    #[test]
    fn each_range_is_classified() {
        for (ip, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.0.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.254", SharedAddressSpace),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("192.0.0.8", IetfProtocol),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.1", Benchmarking),
            ("192.88.99.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Broadcast),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fd00:ec2::254", Metadata),
            ("ff02::1", Multicast),
            ("fec0::1", Reserved),
            ("100::1", Reserved),
            ("64:ff9b:1::a00:1", Reserved),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", IetfProtocol),
            ("2001:10::1", IetfProtocol),
            // IPv6 forms of IPv4 addresses are judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::127.0.0.1", Loopback),
            ("::0.0.0.2", ThisNetwork),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::", Private),
        ] {
            assert_eq!(why(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(why(ip), None, "{ip}");
        }
    }

    fn name(s: &str) -> Name {
        s.parse().expect("a DNS name")
    }

    fn fake() -> Arc<dyn Resolve> {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        let public: IpAddr = "93.184.216.34".parse().expect("ip");
        Arc::new(
            FakeResolver::new()
                .with("receiver.nimbus-test.invalid", &[lo])
                .with("mixed.nimbus-test.invalid", &[lo, public, "::ffff:10.0.0.1".parse().expect("ip")])
                .with("metadata.nimbus-test.invalid", &["fd00:ec2::254".parse().expect("ip"), METADATA_V4.into()]),
        )
    }

    #[tokio::test]
    async fn the_resolver_hands_on_only_checked_addresses() {
        let checking = CheckingResolver::new(fake(), false);
        for n in ["receiver.nimbus-test.invalid", "metadata.nimbus-test.invalid"] {
            let err = checking.resolve(name(n)).await.err().expect("refused");
            let r = err.downcast_ref::<Refused>().expect("a Refused");
            assert_eq!(r.host, n);
            assert!(!r.addrs.is_empty());
        }
        let got: Vec<SocketAddr> = checking.resolve(name("mixed.nimbus-test.invalid")).await.expect("one public").collect();
        assert_eq!(got, vec![SocketAddr::new("93.184.216.34".parse().expect("ip"), 0)]);
        // Names the base cannot resolve fail as lookups, not as refusals.
        let err = checking.resolve(name("unknown.nimbus-test.invalid")).await.err().expect("unknown");
        assert!(err.downcast_ref::<Refused>().is_none());
        // Allowed: everything passes, through the same base.
        let open = CheckingResolver::new(fake(), true);
        assert_eq!(open.resolve(name("mixed.nimbus-test.invalid")).await.expect("all").count(), 3);
    }

    #[test]
    fn literals_are_checked() {
        for u in [
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[fd00:ec2::254]/",
        ] {
            let url = reqwest::Url::parse(u).expect("url");
            assert!(check_literal(&url).is_err(), "{u} -> {:?}", url.host_str());
        }
        for u in ["http://93.184.216.34/", "http://[2606:4700::1111]/", "http://receiver.nimbus-test.invalid/"] {
            assert!(check_literal(&reqwest::Url::parse(u).expect("url")).is_ok(), "{u}");
        }
    }

    /// A listener on loopback that counts the connections it accepts.
    async fn listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = n.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Read the request head (bodies are empty here), then answer.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            }
        });
        (port, n)
    }

    fn client(allow_private: bool) -> Egress {
        let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
        Egress::new(builder, allow_private, &BaseResolver::new(fake())).expect("client")
    }

    #[tokio::test]
    async fn refused_destinations_are_never_connected_to() {
        let (port, accepted) = listener().await;
        let strict = client(false);
        for u in [
            format!("http://receiver.nimbus-test.invalid:{port}/"),
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let err = strict.send(strict.post(&u)).await.expect_err("refused");
            assert!(err.refused().is_some(), "{u}: {}", err.chain());
            assert!(!err.is_timeout());
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the listener");
        // The same requests are made when private targets are allowed: the test reaches it.
        let open = client(true);
        for u in [format!("http://receiver.nimbus-test.invalid:{port}/"), format!("http://127.0.0.1:{port}/")] {
            let resp = open.send(open.post(&u)).await.expect("sent");
            assert_eq!(resp.status().as_u16(), 204);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
