//! The Nimbus domain core: typed ids, the one `Error` enum, permissions, money, the clock, the
//! catalog model, the instance state machine and input validation.
//!
//! This crate does no IO. It must never depend on tokio, sqlx, axum or reqwest (checked by
//! `cargo xtask check-deps`): every dialect, the store and the agent share these definitions, and
//! keeping them pure is what makes them unit-testable and cheap to compile.

pub mod auth;
pub mod catalog;
pub mod clock;
pub mod cloudinit;
pub mod error;
pub mod firewall;
pub mod gpu_health;
pub mod ids;
pub mod instance;
pub mod metering;
pub mod model;
pub mod money;
pub mod net;
pub mod password;
pub mod validate;
pub mod webhook;
pub mod wireguard;

pub use error::{ConflictReason, Error, Result};
