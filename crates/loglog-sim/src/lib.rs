//! Deterministic simulation of whole LogLog clusters, with a history checker.

pub mod history;
