//! Files on the host that hold a tenant's secrets or user data (the agent's credentials and
//! kept user data, the container driver's ledgers): written so that no other host user can
//! read them at any moment.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode 0600: a temp file beside it (`.<name>.tmp`) is
/// created with that mode (never readable by others, not even between write and chmod), synced,
/// and renamed over `path`. Callers that may write the same path at once serialise themselves.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
