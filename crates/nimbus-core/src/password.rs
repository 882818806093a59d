//! Passwords for an instance's default user: checked, then turned into a SHA-512 crypt string
//! (`$6$…`, what `/etc/shadow` holds) before anything stores them. The plain text is never
//! persisted or logged.

use crate::error::Error;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

/// Checks `plain` and returns its SHA-512 crypt hash with a random salt.
pub fn hash(field: &str, plain: &str) -> Result<String, Error> {
    let n = plain.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(Error::invalid(field.to_owned(), format!("must be {MIN_LEN} to {MAX_LEN} characters")));
    }
    if plain.chars().any(char::is_control) {
        return Err(Error::invalid(field.to_owned(), "must not contain control characters"));
    }
    // glibc's default number of rounds; the salt is random per password.
    let params = sha_crypt::Sha512Params::new(5_000).map_err(|e| Error::internal(format!("sha512-crypt params: {e:?}")))?;
    sha_crypt::sha512_simple(plain, &params).map_err(|e| Error::internal(format!("sha512-crypt: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_bad_passwords_are_refused() {
        let h = hash("password", "super_secret").expect("hashed");
        assert!(h.starts_with("$6$"), "{h}");
        assert!(sha_crypt::sha512_check("super_secret", &h).is_ok());
        assert!(sha_crypt::sha512_check("wrong-one", &h).is_err());
        assert_ne!(h, hash("password", "super_secret").expect("hashed"), "salted");
        assert!(hash("password", "short").is_err());
        assert!(hash("password", "with\nnewline").is_err());
    }
}
