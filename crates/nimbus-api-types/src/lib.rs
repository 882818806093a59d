//! Wire types of each API dialect: serde shapes only, no logic, so that clients can share them
//! without compiling the server.

pub mod clusters;
pub mod lambda;
pub mod native;
pub mod voltage;
pub mod webhooks;
