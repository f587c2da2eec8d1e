//! The tabpool host: serves the page, launches headless browser tabs over WebDriver, accepts
//! their authenticated sockets, and runs work in them.
//!
//! Start with [`Host::start`], then [`Host::launch_tab`]; call [`Host::shutdown`] to close tabs,
//! browsers and drivers (dropping a `Host` also kills what it started, as a last resort).

pub mod api;
pub mod browser;
pub mod commands;
pub mod exec;
pub mod family;
pub mod host;
pub mod models;
pub mod paths;
pub mod policy;
pub mod pool;
pub mod redact;
pub mod report;
pub mod secret;
pub mod server;
pub mod stats;
pub mod store;
pub mod tab;

#[cfg(test)]
mod layers;

pub use host::{Host, HostConfig, PendingTab};
pub use tab::{Tab, TabError};
