//! API keys and permissions.
//!
//! A key is `nmb_` followed by 43 base62 characters (256 bits of entropy). Only its SHA-256 is
//! stored; the first 12 characters are kept as a non-secret prefix so that operators can tell keys
//! apart in listings and audit logs.

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ids::{ApiKeyId, OrgId};

/// One permission. `Admin` implies every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Admin,
    Create,
    Read,
    Edit,
    Delete,
}

impl Permission {
    pub const ALL: [Permission; 5] = [Permission::Admin, Permission::Create, Permission::Read, Permission::Edit, Permission::Delete];

    fn bit(self) -> u8 {
        match self {
            Permission::Admin => 1,
            Permission::Create => 2,
            Permission::Read => 4,
            Permission::Edit => 8,
            Permission::Delete => 16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Admin => "ADMIN",
            Permission::Create => "CREATE",
            Permission::Read => "READ",
            Permission::Edit => "EDIT",
            Permission::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Permission::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// A set of permissions, stored as a small bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub fn admin() -> Self {
        Permissions(Permission::Admin.bit())
    }

    pub fn from_bits(bits: i64) -> Self {
        Permissions((bits & 0x1f) as u8)
    }

    pub fn bits(self) -> i64 {
        i64::from(self.0)
    }

    pub fn with(mut self, p: Permission) -> Self {
        self.0 |= p.bit();
        self
    }

    pub fn allows(self, p: Permission) -> bool {
        self.0 & Permission::Admin.bit() != 0 || self.0 & p.bit() != 0
    }

    /// Parses `ADMIN` or a comma-separated list such as `CREATE,READ`.
    pub fn parse_list(s: &str) -> Result<Self, Error> {
        let mut out = Permissions::default();
        for part in s.split([',', '|']).filter(|p| !p.trim().is_empty()) {
            let p = Permission::parse(part).ok_or_else(|| {
                Error::invalid("permissions", format!("unknown permission {part:?}; expected ADMIN, CREATE, READ, EDIT or DELETE"))
            })?;
            out = out.with(p);
        }
        if out.0 == 0 {
            return Err(Error::invalid("permissions", "at least one permission is required"));
        }
        Ok(out)
    }

    /// Whether a holder of `self` may hand out (or take away) `other`: ADMIN covers everything,
    /// otherwise `other` must be a subset without ADMIN.
    pub fn covers(self, other: Permissions) -> bool {
        self.0 & Permission::Admin.bit() != 0 || (other.0 & Permission::Admin.bit() == 0 && other.0 & !self.0 == 0)
    }

    pub fn names(self) -> Vec<&'static str> {
        Permission::ALL.into_iter().filter(|p| self.0 & p.bit() != 0).map(Permission::as_str).collect()
    }
}

/// The authenticated caller of a tenant API: the org it acts for and what it may do. Handlers get
/// one from the auth extractor and must call [`Actor::require`] before acting.
#[derive(Debug, Clone)]
pub struct Actor {
    pub org_id: OrgId,
    pub key_id: ApiKeyId,
    pub key_prefix: String,
    pub permissions: Permissions,
    /// The org's rate-limit plan.
    pub plan: String,
    /// The service account the key belongs to (its id), when it belongs to one; `permissions`
    /// are then the service account's, read when the key was authenticated. Dialects that name
    /// the creating principal (the clusters API's `creator_id`) report this, or the key id for a
    /// key of no service account.
    pub service_account_id: Option<String>,
}

impl Actor {
    /// The caller a key (as the store reads it, with its current permissions) acts as.
    pub fn of_key(key: crate::model::ApiKey) -> Actor {
        Actor {
            org_id: key.org_id,
            key_id: key.id,
            key_prefix: key.prefix,
            permissions: key.permissions,
            plan: key.plan,
            service_account_id: key.service_account_id.map(|s| s.to_string()),
        }
    }

    pub fn require(&self, p: Permission) -> Result<(), Error> {
        if self.permissions.allows(p) {
            Ok(())
        } else {
            Err(Error::Forbidden { message: format!("this API key lacks the {} permission", p.as_str()) })
        }
    }
}

/// A freshly minted secret: the plain text (shown once), its hash and prefix (stored).
pub struct NewSecret {
    pub plain: String,
    pub hash: String,
    pub prefix: String,
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Mints a secret with the given prefix (`nmb_` for API keys, `nmbh_` for host tokens).
pub fn new_secret(kind_prefix: &str) -> NewSecret {
    let mut rng = rand::thread_rng();
    let body: String = (0..43).map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char).collect();
    let plain = format!("{kind_prefix}{body}");
    NewSecret { hash: hash_secret(&plain), prefix: plain.chars().take(12).collect(), plain }
}

/// The stored form of a secret. SHA-256 is enough because secrets carry 256 bits of entropy: there
/// is nothing to brute-force, so a slow password hash would only cost latency on every request.
pub fn hash_secret(plain: &str) -> String {
    hex::encode(Sha256::digest(plain.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_is_subset_and_admin_covers_all() {
        let p = |s| Permissions::parse_list(s).unwrap();
        assert!(p("ADMIN").covers(p("ADMIN")));
        assert!(p("ADMIN").covers(p("READ,DELETE")));
        assert!(p("CREATE,READ").covers(p("READ")));
        assert!(p("CREATE,READ").covers(p("CREATE,READ")));
        assert!(!p("CREATE,READ").covers(p("READ,EDIT")));
        assert!(!p("CREATE,READ,EDIT,DELETE").covers(p("ADMIN")));
        assert!(!p("READ").covers(p("CREATE")));
    }

    #[test]
    fn admin_allows_everything_and_others_only_themselves() {
        let admin = Permissions::admin();
        let read = Permissions::default().with(Permission::Read);
        for p in Permission::ALL {
            assert!(admin.allows(p));
        }
        assert!(read.allows(Permission::Read));
        assert!(!read.allows(Permission::Create));
        assert!(!read.allows(Permission::Delete));
    }

    #[test]
    fn parse_list_roundtrips_and_rejects_junk() {
        let p = Permissions::parse_list("CREATE,read").expect("valid");
        assert_eq!(p.names(), vec!["CREATE", "READ"]);
        assert_eq!(Permissions::from_bits(p.bits()), p);
        assert!(Permissions::parse_list("CREATE,ROOT").is_err());
        assert!(Permissions::parse_list("").is_err());
    }

    #[test]
    fn secrets_are_long_distinct_and_hash_stably() {
        let a = new_secret("nmb_");
        let b = new_secret("nmb_");
        assert_ne!(a.plain, b.plain);
        assert_eq!(a.plain.len(), 47);
        assert_eq!(hash_secret(&a.plain), a.hash);
        assert!(a.plain.starts_with(&a.prefix));
    }
}
