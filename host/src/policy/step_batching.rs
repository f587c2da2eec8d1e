//! Continuous batching for generation: which sessions advance in the next step of one replica,
//! and by how many tokens. Every session that is decoding advances by its one token in every
//! step (a decode step costs about the same for 1 or 8 rows — it is bound by reading the
//! weights — so holding one back saves nothing and adds a step of latency to it); prompts are
//! fed in chunks that fill what remains of the step's token budget, oldest first, so a long
//! prompt arriving never stalls the streams already running for longer than one chunk.

/// A session as the step planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Prompt tokens not yet fed to the model (0: the session is decoding).
    pub prompt_left: usize,
}

/// What one session does in the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Index into the planner's input.
    pub session: usize,
    /// Tokens fed this step: a prompt chunk, or 1 (the last sampled token).
    pub tokens: usize,
    /// Whether the step's sample for this row is a real next token: only once the whole prompt
    /// has been fed (a chunk that ends mid-prompt samples nothing anyone uses).
    pub samples: bool,
}

/// Plan one step: `sessions` in arrival order, `max_tokens` the step's token budget, `max_rows`
/// the most sessions per step. Decoding sessions first (each 1 token), then prompt chunks.
pub fn plan(sessions: &[Pending], max_tokens: usize, max_rows: usize) -> Vec<Advance> {
    let (max_tokens, max_rows) = (max_tokens.max(1), max_rows.max(1));
    let mut out = Vec::new();
    let mut used = 0;
    for (i, s) in sessions.iter().enumerate() {
        if s.prompt_left == 0 && out.len() < max_rows && used < max_tokens {
            out.push(Advance { session: i, tokens: 1, samples: true });
            used += 1;
        }
    }
    for (i, s) in sessions.iter().enumerate() {
        if s.prompt_left > 0 && out.len() < max_rows && used < max_tokens {
            let n = s.prompt_left.min(max_tokens - used);
            out.push(Advance { session: i, tokens: n, samples: n == s.prompt_left });
            used += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(prompt_left: usize) -> Pending {
        Pending { prompt_left }
    }

    #[test]
    fn decoding_sessions_all_advance_and_prompts_fill_the_rest() {
        let s = [p(0), p(100), p(0), p(30)];
        let plan = plan(&s, 64, 8);
        assert_eq!(
            plan,
            vec![
                Advance { session: 0, tokens: 1, samples: true },
                Advance { session: 2, tokens: 1, samples: true },
                Advance { session: 1, tokens: 62, samples: false },
            ]
        );
    }

    #[test]
    fn a_prompt_that_fits_samples_its_first_token_in_the_same_step() {
        let plan = plan(&[p(37), p(5)], 64, 8);
        assert_eq!(
            plan,
            vec![Advance { session: 0, tokens: 37, samples: true }, Advance { session: 1, tokens: 5, samples: true }]
        );
    }

    #[test]
    fn rows_and_tokens_are_bounded() {
        let s = vec![p(0); 10];
        assert_eq!(plan(&s, 64, 4).len(), 4);
        assert_eq!(plan(&s, 3, 8).len(), 3);
        assert!(plan(&[], 64, 8).is_empty());
        // Degenerate limits still make progress.
        assert_eq!(plan(&[p(9)], 0, 0), vec![Advance { session: 0, tokens: 1, samples: false }]);
    }
}
