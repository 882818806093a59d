//! Opaque, unguessable identifiers: one newtype per resource so that an `InstanceId` can never be
//! passed where an `SshKeyId` is expected.
//!
//! Every id is 128 random bits rendered as 32 lowercase hex characters, the shape Lambda's
//! clients expect (`ddaedf1b7a0e41ac981711504493b242`). Parsing validates that shape, so a
//! malformed id is rejected before it ever reaches the store.

use std::fmt;

use rand::RngCore;

/// Renders 16 bytes from the OS-seeded CSPRNG as 32 lowercase hex characters.
pub fn random_hex_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// True when `s` has the shape of a Nimbus id (32 lowercase hex characters).
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

macro_rules! typed_id {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The resource kind, used in error messages.
            pub const KIND: &'static str = $kind;

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(random_hex_id())
            }

            /// Parses a client-supplied id; `None` when it is not a well-formed id.
            pub fn parse(s: &str) -> Option<Self> {
                is_valid_id(s).then(|| Self(s.to_owned()))
            }

            /// Wraps a value read back from the store, which only ever holds ids we generated.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

typed_id!(/// An organization: the tenant boundary.
    OrgId, "organization");
typed_id!(/// An API key (its id, never its secret).
    ApiKeyId, "api key");
typed_id!(/// An instance.
    InstanceId, "instance");
typed_id!(/// A registered host (one agent).
    HostId, "host");
typed_id!(/// A host registration token.
    HostTokenId, "host token");
typed_id!(/// An SSH public key registered by a tenant.
    SshKeyId, "ssh key");
typed_id!(/// A persistent file system.
    FileSystemId, "file system");
typed_id!(/// A firewall ruleset.
    FirewallRulesetId, "firewall ruleset");
typed_id!(/// An image.
    ImageId, "image");
typed_id!(/// An event in the outbox.
    EventId, "event");
typed_id!(/// A block volume.
    VolumeId, "volume");
typed_id!(/// A snapshot of an instance disk or a volume.
    SnapshotId, "snapshot");
typed_id!(/// A WireGuard VPN into an organization's private network.
    VpnId, "vpn");
typed_id!(/// A webhook subscription.
    WebhookId, "webhook");
typed_id!(/// One event's delivery to one webhook.
    WebhookDeliveryId, "webhook delivery");
typed_id!(/// A service account: a named, non-human principal of an organization whose API keys act
    /// with its permissions.
    ServiceAccountId, "service account");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_lambda_shaped_and_distinct() {
        let a = InstanceId::generate();
        let b = InstanceId::generate();
        assert_ne!(a, b);
        assert!(is_valid_id(a.as_str()), "{a}");
        assert_eq!(InstanceId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "xyz",
            "DDAEDF1B7A0E41AC981711504493B242",
            "ddaedf1b7a0e41ac981711504493b24",
            "../../etc/passwd00000000000000000",
            "ddaedf1b7a0e41ac981711504493b2422",
        ] {
            assert!(SshKeyId::parse(bad).is_none(), "{bad}");
        }
    }
}
