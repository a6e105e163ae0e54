//! Deterministic simulation of whole lsync devices (docs/testing.md, "Simulation").
#![forbid(unsafe_code)]

pub mod disk;
pub mod net;
pub mod oracle;
