//! Browsers and their WebDriver drivers: start, attach, ask a remote endpoint, and — above all —
//! clean up.

pub mod driver;
pub mod grid;
pub mod grid_local;
pub mod kinds;
pub mod procs;
pub mod session;

pub use driver::DriverProcess;
pub use kinds::{BrowserKind, KindSpec};
pub use session::{BrowserSession, Launch};
