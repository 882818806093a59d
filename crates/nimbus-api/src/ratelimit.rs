//! Rate limits by route class, as GCRA (a token bucket kept as one timestamp per bucket). Each
//! request draws from two buckets of its class: its API key's and its organization's, whose rate
//! and burst are the key's times `rate_limits.org_multiplier` (default 4), so that an org that
//! mints more keys does not get more throughput. A request is admitted only when both buckets
//! have room, and then draws from both; a refusal draws from neither. Checked before a handler
//! runs, so a 429 never has side effects (clients retry launches on 429).
//!
//! State is per process: with several replicas each enforces the limits on its share of the
//! traffic (a key or an org spread over R replicas can get up to R times its budget).
//!
//! The org comes from the authenticated actor ([`RateLimiter::check_actor`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_control::config::{Rate, RateLimits};
use nimbus_core::auth::Actor;
use nimbus_core::ids::{ApiKeyId, OrgId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Default,
    Launch,
    /// The native API, limited by the org's plan.
    Native,
}

/// Whose bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Key(ApiKeyId),
    Org(OrgId),
}

/// Buckets kept before idle ones (a full bucket is the same as none) are dropped.
const MAX_BUCKETS: usize = 100_000;

pub struct RateLimiter {
    limits: RateLimits,
    start: Instant,
    /// Theoretical arrival time per (owner, class), in seconds since `start`.
    tat: Mutex<HashMap<(Owner, RouteClass), f64>>,
}

/// Outcome of one check, with what the `X-RateLimit-*` headers report: the key's limit, and
/// the requests left before either bucket refuses.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset_after: Duration,
}

const UNLIMITED: Decision =
    Decision { allowed: true, limit: u32::MAX, remaining: u32::MAX, retry_after: Duration::ZERO, reset_after: Duration::ZERO };

/// One bucket's answer, before anything is written.
struct Gcra {
    allowed: bool,
    new_tat: f64,
    limit: u32,
    remaining: u32,
    wait: f64,
    reset: f64,
}

fn gcra(tat: Option<f64>, rate: Rate, now: f64) -> Gcra {
    let t = 1.0 / rate.per_second;
    let burst = rate.burst.max(1);
    let tau = t * f64::from(burst - 1);
    let tat = tat.unwrap_or(now).max(now);
    if tat - now > tau + 1e-9 {
        return Gcra { allowed: false, new_tat: tat, limit: burst, remaining: 0, wait: (tat - tau - now).max(0.0), reset: tat - now };
    }
    let new_tat = tat + t;
    let used = ((new_tat - now) / t).ceil() as u32;
    Gcra { allowed: true, new_tat, limit: burst, remaining: burst.saturating_sub(used), wait: 0.0, reset: new_tat - now }
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter { limits, start: Instant::now(), tat: Mutex::new(HashMap::new()) }
    }

    fn rate(&self, class: RouteClass, plan: &str) -> Rate {
        match class {
            RouteClass::Default => self.limits.default,
            RouteClass::Launch => self.limits.launch,
            RouteClass::Native => {
                let p = self.limits.plans.get(plan).or_else(|| self.limits.plans.get("professional"));
                p.map(|p| Rate { per_second: f64::from(p.per_hour) / 3600.0, burst: p.burst }).unwrap_or(self.limits.default)
            }
        }
    }

    /// The org's bucket for a class whose per-key rate is `key_rate`.
    fn org_rate(&self, key_rate: Rate) -> Option<Rate> {
        let m = self.limits.org_multiplier;
        (m > 0.0 && m.is_finite()).then(|| Rate {
            per_second: key_rate.per_second * m,
            burst: (f64::from(key_rate.burst.max(1)) * m).ceil().min(f64::from(u32::MAX)) as u32,
        })
    }

    /// Draws from the actor's key's bucket and its org's (the plan picks the native rate).
    pub fn check_actor(&self, actor: &Actor, class: RouteClass) -> Decision {
        self.check_owned(&actor.key_id, Some(&actor.org_id), class, &actor.plan)
    }

    fn check_owned(&self, key: &ApiKeyId, org: Option<&OrgId>, class: RouteClass, plan: &str) -> Decision {
        let rate = self.rate(class, plan);
        if !self.limits.enabled || rate.per_second <= 0.0 {
            return UNLIMITED;
        }
        let org = org.zip(self.org_rate(rate));
        self.check_at(key, org, class, rate, self.start.elapsed().as_secs_f64())
    }

    fn check_at(&self, key: &ApiKeyId, org: Option<(&OrgId, Rate)>, class: RouteClass, rate: Rate, now: f64) -> Decision {
        let mut m = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_BUCKETS {
            m.retain(|_, tat| *tat > now);
        }
        let key_slot = (Owner::Key(key.clone()), class);
        let k = gcra(m.get(&key_slot).copied(), rate, now);
        let o = org.map(|(org, org_rate)| {
            let slot = (Owner::Org(org.clone()), class);
            let g = gcra(m.get(&slot).copied(), org_rate, now);
            (slot, g)
        });
        let org_allows = o.as_ref().is_none_or(|(_, g)| g.allowed);
        if !k.allowed || !org_allows {
            // Wait for whichever refused (the longer wait when both did); draw from neither.
            let refused = [Some(&k), o.as_ref().map(|(_, g)| g)];
            let wait = refused.iter().flatten().filter(|g| !g.allowed).map(|g| g.wait).fold(0.0, f64::max);
            let reset = refused.iter().flatten().map(|g| g.reset).fold(0.0, f64::max);
            return Decision {
                allowed: false,
                limit: k.limit,
                remaining: 0,
                retry_after: Duration::from_secs_f64(wait.max(0.0)),
                reset_after: Duration::from_secs_f64(reset.max(0.0)),
            };
        }
        m.insert(key_slot, k.new_tat);
        let (mut remaining, mut reset) = (k.remaining, k.reset);
        if let Some((slot, g)) = o {
            m.insert(slot, g.new_tat);
            remaining = remaining.min(g.remaining);
            reset = reset.max(g.reset);
        }
        Decision {
            allowed: true,
            limit: k.limit,
            remaining,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_secs_f64(reset.max(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(l: &RateLimiter, k: &ApiKeyId, class: RouteClass, now: f64) -> Decision {
        l.check_at(k, None, class, l.rate(class, ""), now)
    }

    fn at_org(l: &RateLimiter, k: &ApiKeyId, org: &OrgId, class: RouteClass, now: f64) -> Decision {
        let rate = l.rate(class, "");
        l.check_at(k, l.org_rate(rate).map(|r| (org, r)), class, rate, now)
    }

    fn limits(org_multiplier: f64) -> RateLimits {
        RateLimits {
            enabled: true,
            default: Rate { per_second: 1.0, burst: 3 },
            launch: Rate { per_second: 0.1, burst: 1 },
            org_multiplier,
            ..RateLimits::default()
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let l = RateLimiter::new(limits(0.0));
        let k = ApiKeyId::generate();
        for _ in 0..3 {
            assert!(at(&l, &k, RouteClass::Default, 0.0).allowed);
        }
        let d = at(&l, &k, RouteClass::Default, 0.0);
        assert!(!d.allowed);
        assert!((d.retry_after.as_secs_f64() - 1.0).abs() < 1e-6);
        assert!(at(&l, &k, RouteClass::Default, 1.0).allowed);
        // Launch is a separate bucket: 1 per 10 s.
        assert!(at(&l, &k, RouteClass::Launch, 1.0).allowed);
        assert!(!at(&l, &k, RouteClass::Launch, 5.0).allowed);
        assert!(at(&l, &k, RouteClass::Launch, 11.0).allowed);
        // Another key is unaffected.
        assert!(at(&l, &ApiKeyId::generate(), RouteClass::Default, 0.0).allowed);
    }

    #[test]
    fn keys_of_one_org_share_its_budget() {
        // Per key: burst 3, 1/s. Per org: ×2, burst 6, 2/s.
        let l = RateLimiter::new(limits(2.0));
        let org = OrgId::generate();
        let keys: Vec<ApiKeyId> = (0..4).map(|_| ApiKeyId::generate()).collect();
        let admitted = (0..12).filter(|i| at_org(&l, &keys[i % 4], &org, RouteClass::Default, 0.0).allowed).count();
        assert_eq!(admitted, 6, "four keys of burst 3 get the org's 6 together, not 12");
        let d = at_org(&l, &keys[0], &org, RouteClass::Default, 0.0);
        assert!(!d.allowed);
        assert_eq!(d.limit, 3, "the key's limit, as a per-key 429 reports it");
        assert!((d.retry_after.as_secs_f64() - 0.5).abs() < 1e-6, "{d:?}");
        // Refusals drew from neither bucket: half a second later the org has room for one.
        assert!(at_org(&l, &keys[3], &org, RouteClass::Default, 0.5).allowed);
        assert!(!at_org(&l, &keys[2], &org, RouteClass::Default, 0.5).allowed);
        // Another org is unaffected, and the launch class has its own org bucket.
        let other = OrgId::generate();
        assert!(at_org(&l, &ApiKeyId::generate(), &other, RouteClass::Default, 0.5).allowed);
        assert!(at_org(&l, &keys[1], &org, RouteClass::Launch, 0.5).allowed);
    }

    #[test]
    fn a_key_is_still_held_to_its_own_bucket() {
        let l = RateLimiter::new(limits(4.0));
        let (org, k) = (OrgId::generate(), ApiKeyId::generate());
        let admitted = (0..10).filter(|_| at_org(&l, &k, &org, RouteClass::Default, 0.0).allowed).count();
        assert_eq!(admitted, 3);
        // The org has 12 − 3 left for other keys.
        let d = at_org(&l, &ApiKeyId::generate(), &org, RouteClass::Default, 0.0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2, "the key's remaining is the tighter of the two: {d:?}");
    }
}
