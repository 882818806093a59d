//! WireGuard key pairs (Curve25519, base64 as `wg genkey` / `wg pubkey` print them).

use base64::Engine;
use rand::RngCore;

/// A fresh `(private, public)` key pair, both base64.
pub fn keypair() -> (String, String) {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    // Clamped as `wg genkey` does, so the stored key is exactly what WireGuard uses.
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    let public = curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(k).to_bytes();
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(k), b64.encode(public))
}

/// The public key of a base64 private key; `None` when it is not 32 bytes of base64.
pub fn public_key(private_b64: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let k: [u8; 32] = b64.decode(private_b64.trim()).ok()?.try_into().ok()?;
    Some(b64.encode(curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(k).to_bytes()))
}

/// Whether `s` is a base64 WireGuard key (32 bytes).
pub fn is_key(s: &str) -> bool {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).is_ok_and(|b| b.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_wireguard_tools() {
        // The wg(8) man page's example key and what `wg pubkey` (wireguard-tools 1.0.20210914)
        // prints for it on Debian 12.
        assert_eq!(
            public_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").as_deref(),
            Some("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
        );
        let (a, b) = keypair();
        assert!(is_key(&a) && is_key(&b));
        assert_eq!(public_key(&a), Some(b));
        assert_ne!(keypair().0, keypair().0);
        assert!(!is_key("not a key"));
    }
}
