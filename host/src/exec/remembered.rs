//! The backend `--backend auto` chose, remembered per machine setup, so `tabpool embed` does not
//! start WebGPU and time every backend on every run (3.3–3.7 s, against 1.5 s for a forced
//! `--backend webnn`, here).
//!
//! A small JSON file next to the history database (`calibrations.json`), not the database: `embed`
//! does not open the history (DuckDB lets one process write a file and a running `serve` holds
//! it; opening it would also cost more than the lookup saves), and the history records pool
//! batches, not calibrations. An entry's key names everything that decides which backend is
//! fastest: the model (name and weight hashes), the browser kind, its binary (path, size and
//! mtime, which an upgrade changes) and extra flags, the page build (by content) and this
//! tabpool binary (path, size, mtime).
//! A stale entry never pins a backend: the caller checks the browser still reports the version
//! measured, and if the remembered backend does not load it calibrates again and overwrites it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::browser::BrowserKind;
use crate::models::minilm::MiniLm;
use crate::policy::backend_choice::Measured;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Remembered {
    /// What calibration chose: "webnn-cpu", "webgpu", "wasm-cpu" (in the tab) or "cpu" (host).
    pub backend: String,
    /// The browser's user agent when it was measured: its version, as the browser reports it.
    pub user_agent: Option<String>,
    /// The calibration figures the choice was made by.
    pub measured: Vec<Measured>,
    /// When, in Unix seconds.
    pub at: u64,
}

/// Entries a cache file keeps.
pub const KEPT: usize = 16;

/// The file of remembered choices, one per key.
pub struct CalibrationCache {
    path: PathBuf,
}

impl CalibrationCache {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CalibrationCache { path: path.into() }
    }

    /// `calibrations.json` beside the history database (`$TABPOOL_HISTORY`'s folder, else
    /// `~/.local/share/tabpool/`).
    pub fn default_path() -> PathBuf {
        crate::store::Store::default_path().with_file_name("calibrations.json")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry; a missing or unreadable file is an empty cache (it only saves time).
    fn entries(&self) -> BTreeMap<String, Remembered> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<Remembered> {
        self.entries().remove(key)
    }

    /// Remember `r` under `key`, keeping the newest [`KEPT`] entries (every rebuild of tabpool or
    /// the page, every browser upgrade is a new key); written to a temporary file and renamed, so
    /// a concurrent reader never sees half a file.
    pub fn put(&self, key: &str, r: Remembered) -> anyhow::Result<()> {
        let mut all = self.entries();
        all.insert(key.to_string(), r);
        while all.len() > KEPT {
            let oldest = all.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()).expect("not empty");
            all.remove(&oldest);
        }
        self.write(&all)
    }

    pub fn forget(&self, key: &str) -> anyhow::Result<()> {
        let mut all = self.entries();
        if all.remove(key).is_some() { self.write(&all) } else { Ok(()) }
    }

    fn write(&self, all: &BTreeMap<String, Remembered>) -> anyhow::Result<()> {
        crate::paths::write_private_atomically(&self.path, &serde_json::to_vec_pretty(all)?)
    }
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A file's identity for a key: canonical path, size and modification time (ns).
fn file_id(p: &Path) -> anyhow::Result<String> {
    let canon = p.canonicalize().with_context(|| format!("resolving {}", p.display()))?;
    let meta = std::fs::metadata(&canon).with_context(|| format!("reading {}", canon.display()))?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(format!("{}:{}:{mtime}", canon.display(), meta.len()))
}

/// 64-bit FNV-1a: a short, stable fingerprint (a cache key, not a security boundary).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> String {
    let h = bytes.into_iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// The model's weight hashes (each a blake3 of the weight's bytes), fingerprinted: exactly the
/// weights that were loaded.
fn weights_fingerprint(model: &MiniLm) -> String {
    fnv1a(model.graph.weights.iter().flat_map(|w| w.name.bytes().chain(w.hash.bytes())))
}

/// The page build by content: setup regenerates `www/pkg` on every run, so its mtime says nothing.
fn page_fingerprint(wasm: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    Ok(format!("{}:{}", bytes.len(), fnv1a(bytes)))
}

/// The key of `model` on a tab of `kind` started from `binary` with `flags`, serving the page
/// in `www`, driven by this executable.
pub fn key(model: &MiniLm, kind: BrowserKind, binary: &Path, flags: &[String], www: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding this executable")?;
    Ok(format!(
        "model={} weights={} | browser={} {} flags={:?} | page={} | tabpool={} {}",
        model.name,
        weights_fingerprint(model),
        kind.name(),
        file_id(binary)?,
        flags,
        page_fingerprint(&www.join(crate::paths::PAGE_WASM))?,
        env!("CARGO_PKG_VERSION"),
        file_id(&exe)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_forget_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CalibrationCache::new(dir.path().join("sub/calibrations.json"));
        assert_eq!(cache.get("a"), None, "a missing file is an empty cache");
        let r = |b: &str| Remembered {
            backend: b.into(),
            user_agent: Some("UA/1".into()),
            measured: vec![Measured::ok(b, 9.5), Measured::failed("webgpu", "no adapter")],
            at: 7,
        };
        cache.put("a", r("webnn-cpu")).unwrap();
        cache.put("b", r("cpu")).unwrap();
        assert_eq!(cache.get("a"), Some(r("webnn-cpu")));
        cache.forget("a").unwrap();
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(r("cpu")));
        std::fs::write(cache.path(), b"{ not json").unwrap();
        assert_eq!(cache.get("b"), None, "a corrupt file is an empty cache, not an error");
        cache.put("c", r("webgpu")).unwrap();
        assert_eq!(cache.get("c"), Some(r("webgpu")), "and is replaced by the next write");
        for i in 0..KEPT as u64 + 3 {
            cache.put(&format!("k{i}"), Remembered { at: 100 + i, ..r("cpu") }).unwrap();
        }
        assert_eq!(cache.entries().len(), KEPT, "only the newest entries are kept");
        assert!(cache.get("c").is_none() && cache.get(&format!("k{}", KEPT + 2)).is_some());
    }

    #[test]
    fn a_changed_file_changes_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("browser");
        std::fs::write(&f, b"v1").unwrap();
        let a = file_id(&f).unwrap();
        std::fs::write(&f, b"v2 longer").unwrap();
        assert_ne!(a, file_id(&f).unwrap(), "an upgraded binary is another key");
        assert!(file_id(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn the_page_is_known_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
        std::fs::write(&a, b"\0asm page").unwrap();
        std::fs::write(&b, b"\0asm page").unwrap();
        assert_eq!(page_fingerprint(&a).unwrap(), page_fingerprint(&b).unwrap(), "a rebuild of the same page");
        std::fs::write(&b, b"\0asm pagf").unwrap();
        assert_ne!(page_fingerprint(&a).unwrap(), page_fingerprint(&b).unwrap());
    }
}
