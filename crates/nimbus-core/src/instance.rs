//! The canonical instance lifecycle, validated here and mapped by each dialect to its own names.
//!
//! ```text
//!   pending ─► booting ─► active ◄──────────────┐
//!                │  ▲       │  │               │
//!                │  │       │  └─► restarting ─┘
//!                ▼  │       ▼
//!             unhealthy ◄─ (host lost)    active ─► stopping ─► stopped ─► starting ─► active
//!
//!   any non-terminal ─► terminating ─► terminated
//! ```
//!
//! `unhealthy` is entered when the host stops heartbeating and left when it reports the instance
//! running again.

use serde::{Deserialize, Serialize};

use crate::error::{ConflictReason, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Booting,
    Active,
    Restarting,
    Stopping,
    Stopped,
    Starting,
    Unhealthy,
    Terminating,
    Terminated,
}

impl InstanceState {
    pub const ALL: [InstanceState; 10] = [
        InstanceState::Pending,
        InstanceState::Booting,
        InstanceState::Active,
        InstanceState::Restarting,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Starting,
        InstanceState::Unhealthy,
        InstanceState::Terminating,
        InstanceState::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Booting => "booting",
            InstanceState::Active => "active",
            InstanceState::Restarting => "restarting",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Starting => "starting",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Terminating => "terminating",
            InstanceState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        InstanceState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the instance still holds host capacity.
    pub fn holds_capacity(self) -> bool {
        self != InstanceState::Terminated
    }

    /// Whether the instance's host should run it (the agent's desired state).
    pub fn wants_running(self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Booting
                | InstanceState::Active
                | InstanceState::Restarting
                | InstanceState::Starting
                | InstanceState::Unhealthy
        )
    }

    /// The documented transition table. Anything not listed is refused.
    pub fn can_transition_to(self, to: InstanceState) -> bool {
        use InstanceState::*;
        match (self, to) {
            (Terminated, _) => false,
            (_, Terminating) => self != Terminating,
            (Terminating, Terminated) => true,
            (Pending, Booting) => true,
            (Booting, Active) | (Booting, Unhealthy) => true,
            (Active, Restarting) | (Active, Stopping) | (Active, Unhealthy) => true,
            (Restarting, Active) | (Restarting, Unhealthy) => true,
            (Unhealthy, Active) | (Unhealthy, Restarting) => true,
            (Stopping, Stopped) => true,
            (Stopped, Starting) => true,
            (Starting, Active) | (Starting, Unhealthy) => true,
            _ => false,
        }
    }

    /// `Ok` when `self → to` is allowed, otherwise a `Conflict` naming both states.
    pub fn check_transition(self, to: InstanceState) -> Result<(), Error> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(Error::conflict(ConflictReason::InvalidState, format!("instance cannot go from {} to {}", self.as_str(), to.as_str())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::{self, *};

    #[test]
    fn transition_table() {
        let allowed = [
            (Pending, Booting),
            (Booting, Active),
            (Active, Restarting),
            (Restarting, Active),
            (Active, Unhealthy),
            (Unhealthy, Active),
            (Active, Stopping),
            (Stopping, Stopped),
            (Stopped, Starting),
            (Starting, Active),
            (Active, Terminating),
            (Stopped, Terminating),
            (Terminating, Terminated),
        ];
        for from in InstanceState::ALL {
            for to in InstanceState::ALL {
                let expect = allowed.contains(&(from, to))
                    || (to == Terminating && from != Terminating && from != Terminated)
                    || matches!(
                        (from, to),
                        (Booting, Unhealthy) | (Restarting, Unhealthy) | (Unhealthy, Restarting) | (Starting, Unhealthy)
                    );
                assert_eq!(from.can_transition_to(to), expect, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn names_roundtrip() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(s.as_str()), Some(s));
        }
        assert_eq!(InstanceState::parse("running"), None);
    }
}
