//! Credentials never leave the host in what it shows: a WebDriver URL such as
//! `http://user:secret@grid:4444/wd/hub` appears in `/status`, logs, history rows and errors as
//! `http://***@grid:4444/wd/hub`; a URL kept in configuration is a [`SecretUrl`], redacted
//! wherever it is shown.

/// A URL that may carry credentials (a remote WebDriver endpoint such as
/// `http://user:password@grid:4444`). Read from a config file or flag as a plain string
/// (`Deserialize` is transparent), but every way of showing it — `Debug`, `Display`,
/// `Serialize` (the history's `runs` row, `/status`) — gives it redacted by [`url`], so no log or
/// row can leak it. The whole URL only through [`SecretUrl::expose`], for the one place that
/// connects (`browser::session`).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL with its credentials: only to connect to it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as shown: credentials redacted.
    pub fn shown(&self) -> String {
        url(&self.0)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> SecretUrl {
        SecretUrl::new(s)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.shown(), f)
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

/// `url` with any userinfo (`user:password@`) replaced by `***@`.
pub fn url(url: &str) -> String {
    text(url)
}

/// Every `scheme://userinfo@host` inside `s` redacted; the rest unchanged.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace/quote; userinfo is what
        // precedes its last '@'.
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '>') || c.is_whitespace());
        let authority = &tail[..end.unwrap_or(tail.len())];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::SecretUrl;

    #[test]
    fn a_secret_url_shows_only_redacted_and_connects_whole() {
        let u: SecretUrl = serde_json::from_str("\"http://user:s3cret@grid:4444/wd/hub\"").unwrap();
        assert_eq!(u.expose(), "http://user:s3cret@grid:4444/wd/hub");
        for shown in [format!("{u:?}"), format!("{u:#?}"), u.to_string(), serde_json::to_string(&u).unwrap()] {
            assert!(!shown.contains("s3cret") && shown.contains("http://***@grid:4444/wd/hub"), "{shown}");
        }
        assert_eq!(SecretUrl::from("http://grid:4444").to_string(), "http://grid:4444");
    }

    #[test]
    fn userinfo_is_hidden_everywhere_it_appears() {
        assert_eq!(super::url("http://user:s3cret@grid:4444/wd/hub"), "http://***@grid:4444/wd/hub");
        assert_eq!(super::url("https://tok@h"), "https://***@h");
        assert_eq!(super::url("http://grid:4444/wd/hub"), "http://grid:4444/wd/hub");
        let msg = "launching a grid tab: starting a browser session through http://a:b@10.0.0.9:4444: refused (see http://x:y@z/q?u=v@w)";
        let shown = super::text(msg);
        assert!(!shown.contains("a:b") && !shown.contains("x:y"), "{shown}");
        assert_eq!(
            shown,
            "launching a grid tab: starting a browser session through http://***@10.0.0.9:4444: refused (see http://***@z/q?u=v@w)"
        );
        assert_eq!(super::text("no urls here"), "no urls here");
        assert_eq!(super::text("ends with ://"), "ends with ://");
    }
}
