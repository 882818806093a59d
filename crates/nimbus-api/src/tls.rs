//! The server's TLS identity: a certificate and key from PEM files (an operator's, or a
//! self-signed pair made on first start the way Incus does it), swapped in place when the files
//! change or on SIGHUP. Connections already open keep the session they negotiated; only new
//! handshakes see the new certificate, so a renewal drops nobody.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: e.to_string() }
}

/// SHA-256 of a certificate's DER encoding, lower-case hex: what an agent pins
/// (`nimbus agent --server-fingerprint`) and what `openssl x509 -fingerprint -sha256` prints
/// (there upper-case with colons; agents accept both spellings).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Where `nimbus server` keeps the certificate it made itself.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let d = data_dir.join("tls");
    (d.join("server.crt"), d.join("server.key"))
}

/// Makes a self-signed certificate for `names` (host names and IP addresses) under
/// `<data_dir>/tls/` unless one is there already; the key is written 0600 in a 0700 directory.
/// Returns the certificate and key paths and whether they were made now.
pub fn ensure_self_signed(data_dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let (cert_path, key_path) = self_signed_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    let dir = cert_path.parent().unwrap_or(data_dir);
    create_private_dir(dir).map_err(|e| file_err(dir, e))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "nimbus server");
    params.distinguished_name = dn;
    let now = chrono::Utc::now();
    use chrono::Datelike;
    let (y, m) = (now.year(), u8::try_from(now.month()).unwrap_or(1));
    params.not_before = rcgen::date_time_ymd(y - 1, m, 1);
    params.not_after = rcgen::date_time_ymd(y + 10, m, 1);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Config(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| TlsError::Config(e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| file_err(&key_path, e))?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644).map_err(|e| file_err(&cert_path, e))?;
    Ok((cert_path, key_path, true))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically(path, data, 0o600)
}

/// Writes `data` to a temporary file created with `mode` (never readable by others, not even
/// for a moment) and renames it over `path`.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

struct Loaded {
    config: Arc<ServerConfig>,
    fingerprint: String,
}

/// What identifies a version of the two files, so a poll notices a renewal.
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

/// The server's certificate, reloadable.
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<Loaded>>,
    stamp: Mutex<Stamp>,
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Loaded, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_err(cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_path, e))?;
    let first = certs.first().ok_or_else(|| file_err(cert_path, "no certificate in the file"))?;
    let fingerprint = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_err(key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("{} and {}: {e}", cert_path.display(), key_path.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded { config: Arc::new(config), fingerprint })
}

impl ServerTls {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = load(cert_path, key_path)?;
        Ok(Arc::new(ServerTls {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            stamp: Mutex::new(stamp(cert_path, key_path)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().config.clone())
    }

    /// SHA-256 fingerprint of the certificate now served.
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    /// Loads the files again; a pair that does not load (a renewal half written, a key that does
    /// not match) leaves the old certificate in service. True when the certificate changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let st = stamp(&self.cert_path, &self.key_path);
        let loaded = load(&self.cert_path, &self.key_path)?;
        let changed = loaded.fingerprint != self.current().fingerprint;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(loaded),
            Err(p) => *p.into_inner() = Arc::new(loaded),
        }
        if let Ok(mut s) = self.stamp.lock() {
            *s = st;
        }
        Ok(changed)
    }

    fn files_changed(&self) -> bool {
        let now = stamp(&self.cert_path, &self.key_path);
        self.stamp.lock().map(|s| *s != now).unwrap_or(true)
    }

    /// Reloads on SIGHUP and when either file changes (polled every `poll`).
    pub fn spawn_reloader(self: &Arc<Self>, poll: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let by_signal = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                if !by_signal && !me.files_changed() {
                    continue;
                }
                match me.reload() {
                    Ok(true) => tracing::info!(fingerprint = %me.fingerprint(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; the old one stays in service"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("nimbus-tls-{}", nimbus_core::ids::random_hex_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn self_signed_is_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (c, k, made) = ensure_self_signed(&d, &names).unwrap();
        assert!(made);
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d.join("tls")).unwrap().permissions().mode() & 0o777, 0o700);
        let fp = ServerTls::load(&c, &k).unwrap().fingerprint();
        assert_eq!(fp.len(), 64);
        let (_, _, again) = ensure_self_signed(&d, &names).unwrap();
        assert!(!again);
        assert_eq!(ServerTls::load(&c, &k).unwrap().fingerprint(), fp, "a restart keeps the identity agents pinned");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_broken_renewal_keeps_the_old_certificate() {
        let d = tmp();
        let (c, k, _) = ensure_self_signed(&d, &["localhost".to_owned()]).unwrap();
        let tls = ServerTls::load(&c, &k).unwrap();
        let fp = tls.fingerprint();
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(tls.files_changed());
        assert!(tls.reload().is_err());
        assert_eq!(tls.fingerprint(), fp);
        // A new pair is picked up.
        std::fs::remove_file(&c).unwrap();
        std::fs::remove_file(&k).unwrap();
        ensure_self_signed(&d, &["localhost".to_owned()]).unwrap();
        assert!(tls.reload().unwrap());
        assert_ne!(tls.fingerprint(), fp);
        std::fs::remove_dir_all(d).unwrap();
    }
}
