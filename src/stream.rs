//! What a generation streams: a closed enum of events, the statistics, and the incremental
//! detokenizer that never splits a UTF-8 character (and holds back text that may start a stop string).

use serde::Serialize;
use tokenizers::Tokenizer;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An EOS token was produced.
    Eos,
    /// `max_new_tokens` was reached.
    MaxTokens,
    /// A stop string appeared in the text.
    StopString,
    /// The cancel handle was used.
    Cancelled,
    /// The structured-output constraint is complete: no further token can extend it.
    Grammar,
}

/// Measurements of one generation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    /// Tokens fed to the model for this turn (template included, cached history excluded).
    pub prompt_tokens: usize,
    /// Tokens generated (EOS included).
    pub generated_tokens: usize,
    /// Forward passes, prefill included.
    pub forward_passes: usize,
    /// SBD blocks committed (0 in NTP mode; in `Auto` mode the NTP steps are not blocks). Each
    /// block after the first starts with a forward of 2k tokens (the previous block, committed
    /// causally, and k masked slots); its other forwards carry k tokens.
    pub sbd_blocks: usize,
    /// generated_tokens / forward_passes.
    pub tokens_per_forward: f64,
    /// Time until the prompt is in the cache: the prefill forward (which in SBD mode also carries
    /// the first block), after any chunks of a long prompt (`decode::PREFILL_CHUNK`).
    pub prefill_ms: f64,
    /// Time until the first text was streamed.
    pub time_to_first_token_ms: f64,
    /// generated_tokens / (total_ms - prefill_ms), per second (in SBD mode the first forward
    /// already reveals part of the first block, so this slightly favours SBD on short outputs).
    pub decode_tokens_per_s: f64,
    /// Whole generation.
    pub total_ms: f64,
    /// Time inside ONNX Runtime's runs; the rest of total_ms is the runtime's own work
    /// (masks, sampler, cache copies, detokenizer, events).
    pub onnx_runtime_ms: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Time spent by the structured-output constraint (token masks and checks; 0 without one).
    pub grammar_ms: f64,
    /// Tokens the constraint forced into block slots without a forward (SBD with a constraint).
    pub forced_tokens: usize,
}

/// One event of a generation's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The first forward finished (the prompt is in the cache).
    PrefillDone {
        /// Tokens fed in it.
        prompt_tokens: usize,
        /// Its time.
        elapsed_ms: f64,
    },
    /// Tokens were committed: one block in SBD mode, one token in NTP mode.
    Block {
        /// The committed token ids.
        tokens: Vec<u32>,
        /// The text that became safe to show (may be empty while a character or a possible
        /// stop string is incomplete).
        text: String,
        /// Forward passes this block used.
        forwards: usize,
    },
    /// The generation ended.
    Finished(Stats),
}

/// Incremental detokenizer (the prefix-offset method): decodes a short window of tokens and
/// emits only text that cannot change any more.
#[derive(Debug, Default)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    prefix: usize,
    read: usize,
    held: String,
    stops: Vec<String>,
    /// Text emitted so far.
    pub emitted: String,
}

impl Detokenizer {
    /// A detokenizer that stops at any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        Detokenizer {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Add tokens; returns (text safe to show, true when a stop string was found). Text after a
    /// stop string is dropped, the stop string itself is not shown.
    pub fn push(&mut self, tok: &Tokenizer, ids: &[u32]) -> (String, bool) {
        self.tokens.extend_from_slice(ids);
        let before = tok
            .decode(&self.tokens[self.prefix..self.read], false)
            .unwrap_or_default();
        let now = tok
            .decode(&self.tokens[self.prefix..], false)
            .unwrap_or_default();
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            self.held.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.tokens.len();
        }
        self.release(false)
    }

    /// Everything still held back (at the end of a generation), minus a stop string.
    pub fn finish(&mut self) -> String {
        self.release(true).0
    }

    fn release(&mut self, all: bool) -> (String, bool) {
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.emitted.push_str(&out);
            return (out, true);
        }
        let keep = if all {
            0
        } else {
            // longest suffix of `held` that is a proper prefix of some stop string
            let mut keep = 0;
            for s in &self.stops {
                for (i, _) in s.char_indices().skip(1) {
                    if self.held.ends_with(&s[..i]) {
                        keep = keep.max(i);
                    }
                }
            }
            keep
        };
        let cut = self.held.len() - keep;
        let out: String = self.held[..cut].to_string();
        self.held.drain(..cut);
        self.emitted.push_str(&out);
        (out, false)
    }
}
