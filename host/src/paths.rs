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

/// Write `bytes` to `path` whole or not at all: into a temporary file beside it (named by this
/// process, so two writers never share one), private to its owner (mode 600: these files hold
/// hashes of secrets and what a machine measured), then renamed over `path`, so a reader never
/// sees half a file. Creates the folder.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
