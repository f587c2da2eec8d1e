//! Where things are: the built page, the browser, its driver. Defaults need no flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The wasm-bindgen output every tab loads.
pub const PAGE_WASM: &str = "pkg/page_runtime_bg.wasm";

/// The `www/` folder: `$TABPOOL_WWW`, else the source tree this binary was built from, else
/// `www/` next to the executable's `target/` folder.
pub fn www_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => {
            let mut c = Vec::new();
            if let Some(p) = std::env::var_os("TABPOOL_WWW") {
                c.push(PathBuf::from(p));
            }
            c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../www"));
            if let Ok(exe) = std::env::current_exe() {
                c.extend(exe.ancestors().skip(1).map(|a| a.join("www")));
            }
            c
        }
    };
    for dir in &candidates {
        if dir.join("index.html").is_file() {
            let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
            if !dir.join(PAGE_WASM).is_file() {
                bail!(
                    "the page runtime is not built: {} is missing. Build it with `bash scripts/build-page.sh`",
                    dir.join(PAGE_WASM).display()
                );
            }
            return Ok(dir);
        }
    }
    bail!("no www/ folder with index.html found (looked in {candidates:?}); set TABPOOL_WWW or pass --www")
}

/// First of `names` found on `PATH` (or the explicit path, which must exist).
pub fn find_binary(explicit: Option<&Path>, names: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{} does not exist", p.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("none of {names:?} found on PATH; install them (Debian: apt-get install chromium chromium-driver)")
}
