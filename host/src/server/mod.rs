//! The host's two listeners, both on 127.0.0.1: HTTP for the page, WebSocket for tabs.

pub mod api;
pub mod bounded;
mod generate;
pub mod http;
pub mod socket;
