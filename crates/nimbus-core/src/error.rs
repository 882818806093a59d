//! The one domain error. Every layer converts its own failures into this enum at its boundary, and
//! every API dialect maps it with one exhaustive `match` (no `_` arm), so adding a variant forces
//! each dialect to decide how to render it.
//!
//! Each variant carries an *external* message (safe to show a tenant) and, where useful, internal
//! context that is logged but never rendered.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist *for this caller*. Cross-tenant access is reported as this too, so
    /// that existence is never revealed.
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} named {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// A field of the request is invalid. `label` names the field as the client sent it.
    #[error("invalid {label}: {message}")]
    InvalidValue { label: String, message: String },
    /// The request as a whole is invalid (malformed JSON, bad combination of fields).
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },
    #[error("authentication failed")]
    Unauthenticated,
    /// Authenticated, but the key lacks a permission.
    #[error("forbidden: {message}")]
    Forbidden { message: String },
    /// The object exists but is in a state that forbids the operation (e.g. file system in use).
    #[error("conflict: {message}")]
    Conflict { reason: ConflictReason, message: String },
    #[error("insufficient capacity: {message}")]
    InsufficientCapacity { message: String },
    #[error("quota exceeded: {message}")]
    QuotaExceeded { message: String },
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("service unavailable: {message}")]
    Unavailable { message: String },
    /// A bug or an infrastructure failure. `internal` is logged, never shown.
    #[error("internal error: {internal}")]
    Internal { internal: String },
}

/// Why a `Conflict` happened; dialects with specific codes (Lambda's `filesystems/filesystem-in-use`)
/// pick them from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    FileSystemInUse,
    FileSystemWrongRegion,
    FirewallRulesetInUse,
    InvalidState,
    /// A concurrent update won a race on a generation number.
    Concurrent,
}

impl Error {
    /// Stable machine-readable code, independent of any dialect.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::InvalidValue { .. } => "invalid_value",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::Unauthenticated => "unauthenticated",
            Error::Forbidden { .. } => "forbidden",
            Error::Conflict { .. } => "conflict",
            Error::InsufficientCapacity { .. } => "insufficient_capacity",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::Internal { .. } => "internal",
        }
    }

    /// The message a client may see. Internal errors never leak their context.
    pub fn external_message(&self) -> String {
        match self {
            Error::Internal { .. } => "An internal error occurred.".to_owned(),
            other => {
                let mut s = other.to_string();
                if let Some(first) = s.get(0..1) {
                    let up = first.to_uppercase();
                    s.replace_range(0..1, &up);
                }
                s
            }
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    pub fn invalid(label: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidValue { label: label.into(), message: message.into() }
    }

    pub fn internal(context: impl Into<String>) -> Self {
        Error::Internal { internal: context.into() }
    }

    pub fn conflict(reason: ConflictReason, message: impl Into<String>) -> Self {
        Error::Conflict { reason, message: message.into() }
    }
}
