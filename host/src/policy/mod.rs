//! Policies: pure functions from observations to decisions, unit-tested without a browser.

pub mod backend_choice;
pub mod batching;
pub mod breaker;
pub mod gen_backend;
pub mod health;
pub mod names;
pub mod placement;
pub mod prefix_routing;
pub mod recovery;
pub mod routing;
pub mod scaling;
pub mod sharding;
pub mod speech_split;
pub mod step_batching;
pub mod threads;
pub mod trend;
pub mod verification;
pub mod weight_form;

pub use names::Named;
