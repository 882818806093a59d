//! Money as integers. Internally micro-dollars (`i64`), so per-second metering of sub-cent prices
//! never rounds; the Lambda dialect shows whole cents per hour.

use std::fmt;

/// An amount in micro-dollars (1 USD = 1,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const PER_CENT: i64 = 10_000;

    pub fn from_cents(cents: i64) -> Self {
        Micros(cents.saturating_mul(Self::PER_CENT))
    }

    /// Whole cents, rounded half away from zero.
    pub fn to_cents_rounded(self) -> i64 {
        let half = Self::PER_CENT / 2;
        if self.0 >= 0 {
            (self.0 + half) / Self::PER_CENT
        } else {
            (self.0 - half) / Self::PER_CENT
        }
    }

    /// The charge for `seconds` at `per_hour`, rounded down to the micro-dollar.
    pub fn per_hour_for_seconds(per_hour: Micros, seconds: i64) -> Micros {
        Micros(((i128::from(per_hour.0) * i128::from(seconds)) / 3600) as i64)
    }
}

impl fmt::Display for Micros {
    /// `$1.234567`-style decimal dollars, exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_and_seconds() {
        let p = Micros::from_cents(129);
        assert_eq!(p.0, 1_290_000);
        assert_eq!(p.to_cents_rounded(), 129);
        assert_eq!(Micros::per_hour_for_seconds(p, 3600), p);
        assert_eq!(Micros::per_hour_for_seconds(p, 1).0, 358);
        assert_eq!(p.to_string(), "1.290000");
        assert_eq!(Micros(-5).to_string(), "-0.000005");
    }
}
