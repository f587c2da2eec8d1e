//! Credentials never leave the host in what it shows: a WebDriver URL such as
//! `http://user:secret@grid:4444/wd/hub` appears in `/status`, logs, history rows and errors as
//! `http://***@grid:4444/wd/hub`.

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
