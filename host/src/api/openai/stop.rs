//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be, and the stop string itself is never sent.

/// Feeds pieces of generated text; says what may be sent and whether a stop string was met.
#[derive(Debug, Default)]
pub struct StopScan {
    stops: Vec<String>,
    held: String,
}

/// What a piece of text let through.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Text that may be sent now.
    pub text: String,
    /// A stop string was met: `text` ends right before it; the generation ends here.
    pub stopped: bool,
}

impl StopScan {
    pub fn new(stops: Vec<String>) -> StopScan {
        StopScan { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> Scanned {
        self.held.push_str(piece);
        // The earliest stop string in what is held ends the text there.
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Scanned { text, stopped: true };
        }
        // Hold back the longest tail that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&n| s.is_char_boundary(n) && self.held.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Scanned { text, stopped: false }
    }

    /// The generation ended without a stop string: whatever was held back is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopScan::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for p in pieces {
            let r = s.push(p);
            sent.push(r.text);
            if r.stopped {
                return (sent, true, String::new());
            }
        }
        let tail = s.finish();
        (sent, false, tail)
    }

    #[test]
    fn a_stop_string_split_over_pieces_is_never_sent() {
        let (sent, stopped, _) = run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]);
        assert_eq!(sent, ["Hello", " world", "", ""]);
        assert!(stopped);
        let (sent, stopped, _) = run(&["END"], &["a E", "N", "D b"]);
        assert_eq!(sent, ["a ", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn held_text_is_released_once_it_cannot_start_a_stop() {
        let (sent, stopped, tail) = run(&["END"], &["a E", "x", " EN"]);
        assert_eq!(sent, ["a ", "Ex", " "]);
        assert!(!stopped);
        assert_eq!(tail, "EN", "the end of the generation releases it");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_kept_whole() {
        let (sent, stopped, _) = run(&["b", "ab"], &["xxab"]);
        assert_eq!((sent, stopped), (vec!["xx".to_string()], true));
        let (sent, stopped, tail) = run(&["éz"], &["café", " ok"]);
        assert_eq!((sent, stopped, tail), (vec!["caf".to_string(), "é ok".to_string()], false, String::new()));
        let (sent, _, tail) = run(&[], &["plain"]);
        assert_eq!((sent, tail), (vec!["plain".to_string()], String::new()));
    }
}
