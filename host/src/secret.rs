//! Secrets as the host handles them: compared in constant time, read only from private files,
//! presented as HTTP bearer credentials.

use std::path::Path;

/// Whether `given` equals `secret`, in time that depends only on their lengths' maximum — never
/// on where they first differ, nor on whether their lengths match (no early return a client
/// could time to learn the key's length).
pub fn same(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // Keep the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is matched without
/// regard to case (RFC 7235 §2.1) and any run of spaces may separate it from the token.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

/// The first line of a key file, refused (as ssh refuses a private key) when others may read
/// or write it: a key in a world-readable file is a key every local user has.
pub fn read_key_file(path: &Path) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("reading the API key file {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "the API key file {} is accessible by others (mode {mode:o}); it must be private to its owner: \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the API key file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal_whatever_the_lengths() {
        assert!(same("k3y-0123456789abcdef", "k3y-0123456789abcdef"));
        assert!(!same("k3y-0123456789abcdeX", "k3y-0123456789abcdef"));
        assert!(!same("k3y", "k3y-0123456789abcdef"), "a prefix");
        assert!(!same("k3y-0123456789abcdef\0", "k3y-0123456789abcdef"), "a NUL-padded key is not the key");
        assert!(!same("", "k"));
        assert!(same("", ""));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc"] {
            assert_eq!(bearer(v), Some("abc"), "{v:?}");
        }
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("abc"), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "k3y-0123456789abcdef\nignored\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&f).unwrap(), "k3y-0123456789abcdef");
    }
}
