//! Validation of tenant-supplied names and payloads, shared by every dialect.

use crate::error::Error;

/// Instance names: 1..=64 characters, no control characters. Orchestrators (SkyPilot) rely on
/// names of exactly 64 characters being stored and returned unchanged.
pub fn instance_name(s: &str) -> Result<(), Error> {
    let n = s.chars().count();
    if n == 0 || n > 64 {
        return Err(Error::invalid("name", "must be 1 to 64 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must not contain control characters"));
    }
    Ok(())
}

/// Names of SSH keys and firewall rulesets: 1..=64 printable characters.
pub fn printable_name(s: &str) -> Result<(), Error> {
    let n = s.chars().count();
    if n == 0 || n > 64 || s.chars().any(char::is_control) {
        return Err(Error::invalid("name", "must be 1 to 64 printable characters"));
    }
    Ok(())
}

/// Service-account names: 1 to 64 printable characters, not only whitespace, no leading or
/// trailing whitespace (so that two names that look the same are the same).
pub fn service_account_name(s: &str) -> Result<(), Error> {
    let n = s.chars().count();
    if n == 0 || n > 64 || s.chars().any(char::is_control) || s.trim().is_empty() || s.trim() != s {
        return Err(Error::invalid(
            "name",
            "must be 1 to 64 printable characters, not only whitespace, without leading or trailing whitespace",
        ));
    }
    Ok(())
}

/// Service-account descriptions: at most 500 printable characters (line breaks allowed).
pub fn service_account_description(s: &str) -> Result<(), Error> {
    if s.chars().count() > 500 || s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid("description", "must be at most 500 printable characters"));
    }
    Ok(())
}

/// File-system names as Lambda defines them: `^[a-zA-Z]+[0-9a-zA-Z-]*$`, 1..=60 characters.
pub fn file_system_name(s: &str) -> Result<(), Error> {
    let ok = (1..=60).contains(&s.len())
        && s.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "must start with a letter and contain only letters, digits and '-', at most 60 characters"))
    }
}

/// Hostnames: RFC 1123, dot-separated labels of 1..=63 letters, digits and '-', not starting or
/// ending with '-', 253 characters in all.
pub fn hostname(s: &str) -> Result<(), Error> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len()) && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') && !l.starts_with('-') && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(Error::invalid("hostname", "must be a valid RFC 1123 host name"));
    }
    Ok(())
}

/// Maximum size of `user_data`, as Lambda documents.
pub const USER_DATA_MAX: usize = 1024 * 1024;

/// At most 1 MiB, and a script (`#!`) or a valid `#cloud-config` (see `cloudinit`).
pub fn user_data(s: &str) -> Result<(), Error> {
    if s.len() > USER_DATA_MAX {
        return Err(Error::invalid("user_data", "must be at most 1 MiB"));
    }
    crate::cloudinit::parse(s).map(|_| ())
}

/// Tags: keys 1..=55 and values 0..=255 characters, keys unique, at most 50 tags.
pub fn tags(tags: &[(String, String)]) -> Result<(), Error> {
    if tags.len() > 50 {
        return Err(Error::invalid("tags", "at most 50 tags are allowed"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 55 || k.chars().any(char::is_control) {
            return Err(Error::invalid("tags", format!("tag key {k:?} must be 1 to 55 printable characters")));
        }
        if v.chars().count() > 255 || v.chars().any(char::is_control) {
            return Err(Error::invalid("tags", format!("value of tag {k:?} must be at most 255 printable characters")));
        }
        if !seen.insert(k.as_str()) {
            return Err(Error::invalid("tags", format!("tag key {k:?} appears twice")));
        }
    }
    Ok(())
}

/// Checks an OpenSSH public key line (`type base64 [comment]`, at most 4096 bytes) by decoding it.
/// The caller stores the line exactly as sent (trimmed): orchestrators compare the listed key with
/// their own byte for byte. Whitespace around the line is allowed (a key read from a `.pub` file
/// ends in a newline); blank text is not a key (only an absent key means "generate one"), and no
/// control character may appear in the line (a NUL or an escape sequence in a comment would reach
/// `authorized_keys` and every listing).
pub fn ssh_public_key(s: &str) -> Result<(), Error> {
    let line = s.trim();
    if line.is_empty() || line.len() > 4096 {
        return Err(Error::invalid("public_key", "must be 1 to 4096 characters"));
    }
    if line.contains('\n') || line.contains('\r') {
        return Err(Error::invalid("public_key", "must be a single line"));
    }
    if line.chars().any(char::is_control) {
        return Err(Error::invalid("public_key", "must not contain control characters"));
    }
    ssh_key::PublicKey::from_openssh(line)
        .map(|_| ())
        .map_err(|_| Error::invalid("public_key", "is not a valid OpenSSH public key (e.g. \"ssh-ed25519 AAAA... comment\")"))
}

/// Generates an ed25519 key pair: `(public key line, OpenSSH private key PEM)`.
pub fn generate_ssh_keypair(comment: &str) -> Result<(String, String), Error> {
    let mut rng = rand::rngs::OsRng;
    let mut key = ssh_key::PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| Error::internal(format!("ed25519 key generation failed: {e}")))?;
    key.set_comment(comment);
    let public = key.public_key().to_openssh().map_err(|e| Error::internal(format!("encoding public key: {e}")))?;
    let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| Error::internal(format!("encoding private key: {e}")))?;
    Ok((public, private.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host";

    #[test]
    fn names() {
        assert!(instance_name(&"x".repeat(64)).is_ok());
        assert!(instance_name(&"x".repeat(65)).is_err());
        assert!(instance_name("").is_err());
        assert!(instance_name("a\nb").is_err());
        assert!(file_system_name("fs-1").is_ok());
        assert!(file_system_name("1fs").is_err());
        assert!(file_system_name("fs_1").is_err());
        assert!(file_system_name(&"a".repeat(61)).is_err());
        assert!(hostname("gpu-node-1.example").is_ok());
        assert!(hostname("-bad").is_err());
        assert!(hostname("bad_host").is_err());
        assert!(service_account_name("ci deployer").is_ok());
        assert!(service_account_name(&"s".repeat(64)).is_ok());
        assert!(service_account_name(&"s".repeat(65)).is_err());
        for bad in ["", "   ", "\t", " lead", "trail ", "a\u{7}b"] {
            assert!(service_account_name(bad).is_err(), "{bad:?}");
        }
        assert!(service_account_description("runs the nightly jobs\nowner: ml-infra").is_ok());
        assert!(service_account_description(&"d".repeat(501)).is_err());
    }

    #[test]
    fn tags_are_checked() {
        assert!(tags(&[("a".into(), "1".into()), ("b".into(), "".into())]).is_ok());
        assert!(tags(&[("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
        assert!(tags(&[("".into(), "1".into())]).is_err());
    }

    #[test]
    fn public_keys() {
        assert!(ssh_public_key(ED).is_ok());
        assert!(ssh_public_key("ssh-ed25519 AAAAnotbase64!!").is_err());
        assert!(ssh_public_key("hello").is_err());
        assert!(ssh_public_key("").is_err());
        assert!(ssh_public_key(&format!("{ED}\n")).is_ok(), "a key read from a file");
        for blank_or_control in ["\u{0}", "a\u{0}b", "\n", "   ", "\t", "\r\n"] {
            assert!(ssh_public_key(blank_or_control).is_err(), "{blank_or_control:?}");
        }
        for with_control in [format!("{ED}\u{0}x"), format!("{ED}\u{1b}[31m"), ED.replacen(' ', "\t", 1), format!("{ED}\u{7f}")] {
            assert!(ssh_public_key(&with_control).is_err(), "{with_control:?}");
        }
        let (public, private) = generate_ssh_keypair("gen").expect("keygen");
        assert!(ssh_public_key(&public).is_ok());
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    }
}
