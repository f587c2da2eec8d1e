//! Fuzz checks for shared_proto; see checks.rs. The targets in fuzz_targets/ are thin wrappers.

pub mod checks;
pub mod counting;
