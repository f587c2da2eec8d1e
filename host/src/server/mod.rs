//! The host's two listeners, both on 127.0.0.1: HTTP for the page, WebSocket for tabs.

pub mod bounded;
pub mod http;
pub mod join;
pub mod socket;
