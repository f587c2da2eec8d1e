//! Browsers and their WebDriver drivers: start, attach, and — above all — clean up.

pub mod chromedriver;
pub mod chromium;
pub mod kinds;
pub mod procs;

pub use chromedriver::Chromedriver;
pub use chromium::{BrowserSession, ChromiumOptions};
pub use kinds::BrowserKind;
