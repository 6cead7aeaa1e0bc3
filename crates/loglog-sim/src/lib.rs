//! Deterministic simulation of whole LogLog clusters, with a history checker.

pub mod disk;
pub mod history;
pub mod net;
pub mod sim;
