/// Bumped on every incompatible change to any message or to the frame layout. The handshake
/// rejects a tab whose runtime speaks another version (a stale cached wasm, typically).
pub const PROTOCOL_VERSION: u32 = 7;

/// Four bytes at the start of every frame: catches a peer speaking something else entirely.
pub const MAGIC: [u8; 4] = *b"TBP1";
