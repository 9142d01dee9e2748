//! Loopback fakes of the providers mesh-notify talks to.
pub mod gotify;
