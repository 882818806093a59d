//! How an agent trusts its server: the Mozilla roots (a server with a public certificate), an
//! operator's CA file, or the SHA-256 fingerprint of the server's own certificate (what `nimbus
//! server` prints for its self-signed one). Certificates are always verified; the only thing
//! `--insecure` allows is plain HTTP to a server that is not on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// What the agent checks the server's certificate against.
#[derive(Clone, Debug, Default)]
pub enum ServerTrust {
    /// The Mozilla root store.
    #[default]
    PublicRoots,
    /// These CA certificates (DER), and no others.
    Ca(Vec<Vec<u8>>),
    /// Exactly the certificate with this SHA-256 digest (of its DER encoding).
    Fingerprint([u8; 32]),
}

impl ServerTrust {
    /// A fingerprint as hex, with or without colons, either case (`openssl x509 -fingerprint
    /// -sha256` and `nimbus server` spell it differently).
    pub fn fingerprint(s: &str) -> Result<ServerTrust, String> {
        let hex_only: String = s.trim().trim_start_matches("sha256:").trim_start_matches("SHA256:").chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hex_only).map_err(|_| format!("{s:?} is not a hex SHA-256 fingerprint"))?;
        let fp: [u8; 32] = bytes.try_into().map_err(|_| format!("{s:?} is not 32 bytes (a SHA-256 fingerprint)"))?;
        Ok(ServerTrust::Fingerprint(fp))
    }

    pub fn ca_file(path: &Path) -> Result<ServerTrust, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in the file", path.display()));
        }
        Ok(ServerTrust::Ca(certs))
    }
}

/// The server URLs of a comma-separated list (the replicas an agent may use, in order of
/// preference), each checked by [`check_server_url`].
pub fn server_urls(list: &str, insecure: bool) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(format!("server URL list {list:?} has an empty entry"));
    }
    for u in &urls {
        check_server_url(u, insecure)?;
    }
    Ok(urls)
}

/// Refuses a plain-HTTP server URL unless the server is on loopback or `insecure` is given: the
/// host secret and every instance's keys and `user_data` travel on this connection.
pub fn check_server_url(url: &str, insecure: bool) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("server URL {url:?}: {e}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match u.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                None => false,
            };
            if loopback || insecure {
                Ok(())
            } else {
                Err(format!("refusing plain HTTP to {url}: the host secret and instances' user_data would cross the network unencrypted; use https:// (or --insecure)"))
            }
        }
        other => Err(format!("server URL {url:?}: scheme {other:?} is neither https nor http")),
    }
}

/// The HTTP client the agent talks to its server with.
pub fn http_client(trust: &ServerTrust) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let config = match trust {
        ServerTrust::PublicRoots => {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::Ca(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(CertificateDer::from(c.clone())).map_err(|e| format!("CA certificate: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::Fingerprint(fp) => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { fingerprint: *fp, provider })).with_no_client_auth()
        }
    };
    // No overall timeout: long-polls legitimately take poll_wait; connect failures still fail fast.
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .use_preconfigured_tls(config)
        .build()
        .map_err(|e| e.to_string())
}

/// Accepts exactly one certificate, by digest: the name in it does not matter (a self-signed
/// certificate made for `localhost` serves an agent that dials an IP), its signature over the
/// handshake does.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} is not the pinned {}",
                hex::encode(got),
                hex::encode(self.fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_insecure() {
        assert!(check_server_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_server_url("http://[::1]:8080", false).is_ok());
        assert!(check_server_url("http://localhost:8080", false).is_ok());
        assert!(check_server_url("http://10.0.0.5:8080", false).is_err());
        assert!(check_server_url("http://control.example:8080", false).is_err());
        assert!(check_server_url("http://control.example:8080", true).is_ok());
        assert!(check_server_url("https://control.example:8080", false).is_ok());
        assert!(check_server_url("ftp://control.example", true).is_err());
        assert_eq!(server_urls("http://127.0.0.1:1/, http://127.0.0.1:2", false).unwrap(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(server_urls("http://127.0.0.1:1,http://10.0.0.5:2", false).is_err(), "every entry is checked");
        assert!(server_urls("http://127.0.0.1:1,", false).is_err());
    }

    #[test]
    fn fingerprints_in_either_spelling() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let (ServerTrust::Fingerprint(a), ServerTrust::Fingerprint(b)) =
            (ServerTrust::fingerprint(&hex).expect("hex"), ServerTrust::fingerprint(&colons).expect("colons"))
        else {
            panic!("not fingerprints")
        };
        assert_eq!(a, b);
        assert!(ServerTrust::fingerprint("abcd").is_err());
        assert!(ServerTrust::fingerprint(&"zz".repeat(32)).is_err());
    }
}
