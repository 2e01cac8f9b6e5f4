//! Structured output: a JSON schema, a regular expression or a Lark grammar (llguidance's syntax)
//! constrains the tokens a generation may commit (docs/structured-output.md).
//!
//! The decode loops ask this module (never the reverse): the exact mask of the tokens the
//! grammar allows next, whether a token sampled without the mask is allowed (consuming it when
//! it is), and the tokens the grammar forces (which fill block slots without a forward).
//!
//! The token trie is built from the model folder's own `tokenizer.json` (byte-level and
//! byte-fallback vocabularies; special tokens are marked and never spelled by text), and the
//! grammar's forced bytes are tokenized by the model's own tokenizer, so forced tokens are the
//! model's canonical tokens.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// What a generation's output must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// A JSON schema (its JSON text): the output is one JSON value that validates against it.
    JsonSchema(String),
    /// A regular expression the whole output must match.
    Regex(String),
    /// A Lark grammar in llguidance's syntax (<https://github.com/guidance-ai/llguidance>).
    Lark(String),
}

impl Constraint {
    fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::Regex(_) => "regex",
            Constraint::Lark(_) => "Lark grammar",
        }
    }

    fn top_level(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonSchema(text) => {
                let mut schema: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| Error::Constraint {
                        kind: self.kind(),
                        message: format!("not valid JSON: {e}"),
                    })?;
                // One line, with the separators models write (Python's json.dumps): flexible
                // whitespace lets a model pad the output with spaces and newlines for ever. A
                // schema's own "x-guidance" options win.
                if schema.is_object() && schema.get("x-guidance").is_none() {
                    JsonCompileOptions {
                        whitespace_flexible: false,
                        item_separator: ", ".into(),
                        key_separator: ": ".into(),
                        ..JsonCompileOptions::default()
                    }
                    .apply_to(&mut schema);
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        })
    }
}

/// The model's vocabulary as llguidance sees it: the token trie plus the model's tokenizer.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode_fast(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            // part of a character: the trie's greedy tokenization spells it byte by byte
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The grammar engine of one model: built once, on the first constrained generation.
pub(crate) struct Engine {
    factory: ParserFactory,
}

impl Engine {
    /// Build the trie from `tokenizer.json` (the folder's, as the manifest names it).
    pub(crate) fn new(dir: &Path, m: &Manifest, tokenizer: &Tokenizer) -> Result<Engine> {
        let path = dir.join(&m.files.tokenizer);
        let bad = |message: String| Error::Tokenizer(format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        // llguidance asserts on some malformed vocabularies: a hostile file must not panic
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| bad("its vocabulary cannot be read as byte strings".into()))?
            .map_err(|e| {
                bad(format!(
                    "structured output needs a byte-level or byte-fallback vocabulary: {e}"
                ))
            })?;
        if words.len() > m.vocab_size {
            return Err(bad(format!(
                "{} tokens, more than the model's vocab_size {}",
                words.len(),
                m.vocab_size
            )));
        }
        let mut words = words;
        words.resize(m.vocab_size, Vec::new()); // rows of the logits no token text names
        let eos = m.eos_token_ids[0];
        let info = TokRxInfo {
            vocab_size: m.vocab_size as u32,
            tok_eos: eos,
            tok_bos: m.bos_token_id,
            tok_pad: m.pad_token_id,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let env: TokEnv = Arc::new(Vocabulary {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| bad(format!("the grammar engine refused the vocabulary: {e}")))?;
        factory.quiet();
        Ok(Engine { factory })
    }
}

/// True when `tokens` form a complete output of `constraint` for `model`'s vocabulary (the
/// check a benchmark applies to unconstrained output; EOS at the end is allowed).
pub fn satisfies(model: &crate::Model, constraint: &Constraint, tokens: &[u32]) -> Result<bool> {
    let mut g = Grammar::new(&*model.grammar_engine()?, constraint)?;
    for &t in tokens {
        if t as usize >= model.manifest.vocab_size {
            return Ok(false);
        }
        if g.is_done() {
            return Ok(model.manifest.eos_token_ids.contains(&t));
        }
        if !g.try_accept(t)? {
            return Ok(false);
        }
    }
    Ok(g.is_done() || g.matcher.is_accepting().unwrap_or(false))
}

/// The constraint of one generation: where the committed tokens have brought the grammar.
pub struct Grammar {
    matcher: Matcher,
    kind: &'static str,
    /// Seconds spent computing masks and checking tokens (the grammar's share of decode time).
    pub seconds: f64,
    /// Token masks computed.
    pub masks: usize,
    /// Tokens the grammar forced (committed without being sampled).
    pub forced: usize,
    /// Whether forced tokens fill SBD slots (off: the ablation).
    use_forced: bool,
    /// The mask of the current state, once computed (`new` computes the first to check the
    /// vocabulary; the first forward's sampling then reuses it); dropped when a token is committed.
    current: Option<SimpleVob>,
    /// Tokens committed (what `look_ahead` rolls back to).
    committed: usize,
    /// Inside `look_ahead`: the token count it started from and that state's mask, once
    /// computed (kept for after the rollback).
    base: Option<(usize, Option<SimpleVob>)>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("kind", &self.kind).finish()
    }
}

impl Grammar {
    /// Compile `constraint` for this engine's vocabulary and check that the vocabulary can
    /// start it: an invalid schema, regex or grammar, or a vocabulary that cannot spell what
    /// it requires first, is an error before any forward.
    pub(crate) fn new(engine: &Engine, constraint: &Constraint) -> Result<Grammar> {
        let kind = constraint.kind();
        let parser = engine
            .factory
            .create_parser(constraint.top_level()?)
            .map_err(|e| Error::Constraint {
                kind,
                message: e.to_string(),
            })?;
        let mut g = Grammar {
            matcher: Matcher::new(Ok(parser)),
            kind,
            seconds: 0.0,
            masks: 0,
            forced: 0,
            use_forced: true,
            current: None,
            committed: 0,
            base: None,
        };
        let first = g.mask()?;
        if first.is_zero() {
            return Err(Error::Constraint {
                kind,
                message:
                    "the model's vocabulary has no token that can start the output it requires"
                        .into(),
            });
        }
        Ok(g)
    }

    fn failed(&self, what: &str) -> Error {
        Error::Constraint {
            kind: self.kind,
            message: format!(
                "{what}: {}",
                self.matcher
                    .get_error()
                    .unwrap_or_else(|| "the grammar engine stopped".into())
            ),
        }
    }

    /// The tokens allowed next (EOS among them when the output may end here).
    pub(crate) fn mask(&mut self) -> Result<&SimpleVob> {
        let m = match self.current.take() {
            Some(m) => m,
            None => {
                let t0 = Instant::now();
                let m = self.matcher.compute_mask();
                self.seconds += t0.elapsed().as_secs_f64();
                self.masks += 1;
                let m = m.map_err(|_| self.failed("computing the token mask failed"))?;
                if let Some((n, kept @ None)) = &mut self.base {
                    if *n == self.committed {
                        *kept = Some(m.clone());
                    }
                }
                m
            }
        };
        Ok(self.current.insert(m))
    }

    /// Copy `row` into `out` with every token the grammar does not allow next at -inf. An
    /// error when no token is allowed (the vocabulary cannot continue the output).
    pub(crate) fn masked_row(&mut self, row: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let kind = self.kind;
        let allowed = self.mask()?;
        if allowed.is_zero() {
            return Err(Error::Constraint {
                kind,
                message: "no token of the model's vocabulary can continue the output here".into(),
            });
        }
        out.clear();
        out.extend(row.iter().enumerate().map(|(i, &v)| {
            if allowed.is_allowed(i as TokenId) {
                v
            } else {
                f32::NEG_INFINITY
            }
        }));
        Ok(())
    }

    /// Commit `tok` if the grammar allows it here; false (nothing committed) when it does not.
    pub(crate) fn try_accept(&mut self, tok: u32) -> Result<bool> {
        let t0 = Instant::now();
        let r = self.matcher.try_consume_tokens(&[tok]);
        self.seconds += t0.elapsed().as_secs_f64();
        match r {
            Ok(0) => Ok(false), // refused: the state, and its mask, are unchanged
            Ok(n) => {
                self.current = None;
                self.committed += n;
                Ok(n == 1)
            }
            Err(_) => {
                self.current = None;
                Err(self.failed("checking a token failed"))
            }
        }
    }

    /// Commit a token the mask allowed.
    pub(crate) fn accept(&mut self, tok: u32) -> Result<()> {
        if self.try_accept(tok)? {
            Ok(())
        } else {
            Err(self.failed(&format!(
                "token {tok} was sampled under the mask but refused"
            )))
        }
    }

    /// Undo the last `n` committed tokens (verified SBD: a draft is checked from the state
    /// before it).
    pub(crate) fn rollback(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.current = None;
        self.matcher
            .rollback(n)
            .map_err(|_| self.failed("rolling back the constraint's state failed"))?;
        self.committed -= n;
        Ok(())
    }

    /// Run `f`, which may commit tokens, and come back to the state before it: what `f`
    /// committed is rolled back, and the mask of that state, if `f` computed it, is kept.
    pub(crate) fn look_ahead<T>(&mut self, f: impl FnOnce(&mut Grammar) -> Result<T>) -> Result<T> {
        let before = self.committed;
        self.base = Some((before, self.current.clone()));
        let out = f(self);
        let mask = self.base.take().and_then(|(_, m)| m);
        let back = self.rollback(self.committed - before);
        let out = out?;
        back?;
        if mask.is_some() {
            self.current = mask;
        }
        Ok(out)
    }

    /// With `false`, `forced_tokens` is always empty (forced tokens are then sampled like any).
    pub(crate) fn forcing(mut self, on: bool) -> Self {
        self.use_forced = on;
        self
    }

    /// Tokens the grammar forces next (not committed).
    pub(crate) fn forced_tokens(&mut self) -> Vec<u32> {
        if !self.use_forced {
            return Vec::new();
        }
        let t0 = Instant::now();
        let ff = self.matcher.compute_ff_tokens();
        self.seconds += t0.elapsed().as_secs_f64();
        ff
    }

    /// True when the output is complete: the grammar allows no further token.
    pub(crate) fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `look_ahead` (SBD + grammar's scoring of a block's slots) comes back to the state before
    /// it: the tokens it committed are rolled back, the same tokens are allowed and can be
    /// committed again, and the mask of that state is kept, not computed again.
    #[test]
    fn look_ahead_comes_back_to_the_state_and_the_mask_before_it() {
        let model = crate::model::demo_for_tests();
        let engine = model.grammar_engine().unwrap();
        let mut g = Grammar::new(&engine, &Constraint::Regex("[0-9]{3} eggs".into())).unwrap();
        let before = g.mask().unwrap().clone();
        let masks = g.masks;
        // three tokens along the grammar, each the first one its mask allows
        let path = g
            .look_ahead(|g| {
                let mut path = Vec::new();
                for _ in 0..3 {
                    let t = g.mask()?.first_bit_set().unwrap() as u32;
                    assert!(g.try_accept(t)?);
                    path.push(t);
                }
                Ok(path)
            })
            .unwrap();
        assert_eq!(path.len(), 3);
        assert_eq!(g.committed, 0);
        assert!(*g.mask().unwrap() == before, "the mask before it");
        // computed: the masks after its first and second tokens; the one before it was kept
        assert_eq!(g.masks, masks + 2);
        for t in path {
            g.accept(t).unwrap();
        }
        assert_eq!(g.committed, 3);
    }
}
