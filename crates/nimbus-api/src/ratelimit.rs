//! Per-API-key rate limits by route class, as GCRA (a token bucket kept as one timestamp per
//! key). Checked before a handler runs, so a 429 never has side effects (clients retry launches
//! on 429). State is per process: with several replicas each enforces the limit on its share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_control::config::{Rate, RateLimits};
use nimbus_core::ids::ApiKeyId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Default,
    Launch,
    /// The native API, limited by the org's plan.
    Native,
}

pub struct RateLimiter {
    limits: RateLimits,
    start: Instant,
    /// Theoretical arrival time per (key, class), in seconds since `start`.
    tat: Mutex<HashMap<(ApiKeyId, RouteClass), f64>>,
}

/// Outcome of one check, with what the `X-RateLimit-*` headers report.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset_after: Duration,
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

    pub fn check(&self, key: &ApiKeyId, class: RouteClass) -> Decision {
        self.check_plan(key, class, "")
    }

    /// Like `check`, for a class whose rate depends on the org's plan.
    pub fn check_plan(&self, key: &ApiKeyId, class: RouteClass, plan: &str) -> Decision {
        let rate = self.rate(class, plan);
        if !self.limits.enabled || rate.per_second <= 0.0 {
            return Decision {
                allowed: true,
                limit: u32::MAX,
                remaining: u32::MAX,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
            };
        }
        self.check_at(key, class, rate, self.start.elapsed().as_secs_f64())
    }

    fn check_at(&self, key: &ApiKeyId, class: RouteClass, rate: Rate, now: f64) -> Decision {
        let t = 1.0 / rate.per_second;
        let burst = rate.burst.max(1);
        let tau = t * f64::from(burst - 1);
        let mut m = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let tat = m.get(&(key.clone(), class)).copied().unwrap_or(now).max(now);
        if tat - now > tau + 1e-9 {
            let wait = tat - tau - now;
            return Decision {
                allowed: false,
                limit: burst,
                remaining: 0,
                retry_after: Duration::from_secs_f64(wait.max(0.0)),
                reset_after: Duration::from_secs_f64((tat - now).max(0.0)),
            };
        }
        let new_tat = tat + t;
        m.insert((key.clone(), class), new_tat);
        let used = ((new_tat - now) / t).ceil() as u32;
        Decision {
            allowed: true,
            limit: burst,
            remaining: burst.saturating_sub(used),
            retry_after: Duration::ZERO,
            reset_after: Duration::from_secs_f64(new_tat - now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(l: &RateLimiter, k: &ApiKeyId, class: RouteClass, now: f64) -> Decision {
        l.check_at(k, class, l.rate(class, ""), now)
    }

    #[test]
    fn burst_then_steady_rate() {
        let l = RateLimiter::new(RateLimits {
            enabled: true,
            default: Rate { per_second: 1.0, burst: 3 },
            launch: Rate { per_second: 0.1, burst: 1 },
            ..RateLimits::default()
        });
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
}
