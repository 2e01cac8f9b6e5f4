//! The loops: NTP (one token per forward) and SBD (the block loop of method doc section 3).
//!
//! Invariant: `context` holds every token of the conversation; `cache` holds the K/V of its first
//! `cache.len()` tokens, all clean. The tokens after that ("pending": the new prompt, or the last
//! finished block) are fed causally in the next forward, which commits them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ort::session::RunOptions;

use crate::error::{Error, Result};
use crate::grammar::Grammar;
use crate::kv_cache::KvCache;
use crate::model::{Model, StepBuffers};
use crate::policy::{AutoPolicy, Shape, Step};
use crate::sample::{entropy_confidence, refused_mix, Sampler};
use crate::select::{select, Selection, SlotScore};
use crate::stream::{Detokenizer, Event, Stats, StopReason};

mod verify;

/// NTP or SBD decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One token per forward from the NTP logits: the baseline.
    Ntp,
    /// Set Block Decoding.
    Sbd,
    /// Per block, NTP or SBD at the block size (up to the chosen one) that maximises expected
    /// tokens per second, from the device's measured cost curve ([`crate::Model::cost_curve`])
    /// and the tokens per forward observed so far in this generation.
    Auto,
}

/// Everything a decode loop borrows.
pub(crate) struct Decoder<'a> {
    pub model: &'a Model,
    pub cache: &'a mut KvCache,
    pub context: &'a mut Vec<u32>,
    pub buf: &'a mut StepBuffers,
    pub input: &'a mut Vec<u32>,
    pub scores: &'a mut Vec<SlotScore>,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub run: &'a RunOptions,
    pub cancelled: &'a AtomicBool,
    /// The structured-output constraint of this generation, if any.
    pub grammar: Option<Grammar>,
    /// Scratch: a logits row with the grammar's disallowed tokens at -inf.
    pub masked: Vec<f32>,
    /// Scratch: under a constraint, the value each masked slot of the block would be revealed
    /// with (`score_guided`, reset by it each forward; the mask token where none).
    pub drafts: Vec<u32>,
}

/// Output of a loop: the generated tokens (also appended to `context`) and the stats.
pub(crate) struct Decoded {
    pub tokens: Vec<u32>,
    pub stats: Stats,
}

struct Clock {
    start: Instant,
    run_seconds0: f64,
    prefill_ms: f64,
    first_ms: Option<f64>,
    forwards: usize,
    blocks: usize,
    prompt_tokens: usize,
    prefill_done: bool,
}

/// Longest run of pending tokens fed in one forward. A longer prompt is prefilled in chunks of
/// this size first (exact: each chunk attends causally to the cache), so the attention scores of a
/// forward never exceed `heads x PREFILL_CHUNK x (past + PREFILL_CHUNK)` floats: without it, a
/// 3,500-token prompt on SmolLM2-135M peaks at 2.0 GB resident instead of about 0.8 GB.
pub const PREFILL_CHUNK: usize = 256;

/// Logit entries of a forward's masked slots from which their scoring is split over two threads
/// (ONNX Runtime's threads are idle between forwards): 2 slots of a 32k vocabulary. Below it a
/// thread costs more than it saves.
const PARALLEL_SCORING_MIN: usize = 1 << 16;

/// Entropy and confidence of every masked slot from its logits row; the same arithmetic on one
/// thread or two, so the result does not depend on the split.
fn score_rows(scores: &mut [SlotScore], logits: &[f32], vocab: usize, mask_id: u32) {
    let one = |s: &mut SlotScore| {
        let (e, c) = entropy_confidence(&logits[s.row * vocab..(s.row + 1) * vocab], mask_id);
        s.entropy = e;
        s.confidence = c;
    };
    if scores.len() >= 2 && scores.len() * vocab >= PARALLEL_SCORING_MIN {
        let (a, b) = scores.split_at_mut(scores.len() / 2);
        std::thread::scope(|t| {
            t.spawn(|| a.iter_mut().for_each(one));
            b.iter_mut().for_each(one);
        });
    } else {
        scores.iter_mut().for_each(one);
    }
}

impl Clock {
    fn ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }
}

impl Decoder<'_> {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// One forward over `self.input`, keeping the logits rows set in `self.buf`; maps an aborted
    /// run to `Ok(false)`.
    fn forward(
        &mut self,
        causal: usize,
        clock: &mut Clock,
        on: &mut dyn FnMut(&Event),
    ) -> Result<bool> {
        if !self.run_forward(causal, clock)? {
            return Ok(false);
        }
        if !clock.prefill_done {
            clock.prefill_done = true;
            clock.prefill_ms = clock.ms();
            on(&Event::PrefillDone {
                prompt_tokens: clock.prompt_tokens,
                elapsed_ms: clock.prefill_ms,
            });
        }
        Ok(true)
    }

    /// Feed pending tokens beyond the last `PREFILL_CHUNK` causally, a chunk per forward (their
    /// logits are not read). Returns false when cancelled.
    fn prefill_chunks(&mut self, clock: &mut Clock) -> Result<bool> {
        while self.context.len() - self.cache.len() > PREFILL_CHUNK {
            if self.is_cancelled() {
                return Ok(false);
            }
            let start = self.cache.len();
            self.input.clear();
            self.input
                .extend_from_slice(&self.context[start..start + PREFILL_CHUNK]);
            self.buf.keep_last(PREFILL_CHUNK);
            if !self.run_forward(PREFILL_CHUNK, clock)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The model's forward, counted; a run aborted by a cancel is `Ok(false)`.
    fn run_forward(&mut self, causal: usize, clock: &mut Clock) -> Result<bool> {
        let r = self
            .model
            .forward(self.cache, self.input, causal, self.buf, self.run);
        match r {
            Ok(()) => {
                clock.forwards += 1;
                Ok(true)
            }
            Err(_) if self.is_cancelled() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn pending_into_input(&mut self) -> usize {
        self.input.clear();
        self.input
            .extend_from_slice(&self.context[self.cache.len()..]);
        self.input.len()
    }

    /// Commit `block` to the context and stream it; returns a stop reason when it ends the generation.
    fn emit(
        &mut self,
        block: &[u32],
        forwards: usize,
        out: &mut Vec<u32>,
        clock: &mut Clock,
        on: &mut dyn FnMut(&Event),
    ) -> Option<StopReason> {
        self.context.extend_from_slice(block);
        out.extend_from_slice(block);
        let eos = &self.model.manifest.eos_token_ids;
        // EOS ends the text: its own token text (e.g. "<|endoftext|>") is never shown
        let visible = block
            .iter()
            .position(|t| eos.contains(t))
            .unwrap_or(block.len());
        let (text, stopped) = self.detok.push(&self.model.tokenizer, &block[..visible]);
        if clock.first_ms.is_none() {
            clock.first_ms = Some(clock.ms());
        }
        on(&Event::Block {
            tokens: block.to_vec(),
            text,
            forwards,
        });
        if stopped {
            Some(StopReason::StopString)
        } else if block.iter().any(|t| eos.contains(t)) {
            Some(StopReason::Eos)
        } else {
            None
        }
    }

    fn finish(
        mut self,
        out: Vec<u32>,
        reason: StopReason,
        clock: Clock,
        on: &mut dyn FnMut(&Event),
    ) -> Decoded {
        let tail = self.detok.finish();
        if !tail.is_empty() {
            on(&Event::Block {
                tokens: Vec::new(),
                text: tail,
                forwards: 0,
            });
        }
        let total = clock.ms();
        let decode_ms = total - clock.prefill_ms;
        let stats = Stats {
            prompt_tokens: clock.prompt_tokens,
            generated_tokens: out.len(),
            forward_passes: clock.forwards,
            sbd_blocks: clock.blocks,
            tokens_per_forward: if clock.forwards > 0 {
                out.len() as f64 / clock.forwards as f64
            } else {
                0.0
            },
            prefill_ms: clock.prefill_ms,
            time_to_first_token_ms: clock.first_ms.unwrap_or(total),
            decode_tokens_per_s: if decode_ms > 0.0 {
                out.len() as f64 / decode_ms * 1e3
            } else {
                0.0
            },
            total_ms: total,
            onnx_runtime_ms: (self.buf.run_seconds - clock.run_seconds0) * 1e3,
            stop_reason: reason,
            grammar_ms: self.grammar.as_ref().map_or(0.0, |g| g.seconds * 1e3),
            forced_tokens: self.grammar.as_ref().map_or(0, |g| g.forced),
        };
        on(&Event::Finished(stats.clone()));
        Decoded { tokens: out, stats }
    }

    fn start_clock(&self) -> Result<Clock> {
        let prompt_tokens = self.context.len() - self.cache.len();
        if prompt_tokens == 0 {
            return Err(Error::InvalidOption {
                option: "prompt",
                value: "\"\"".into(),
                constraint:
                    "is empty and the session holds no pending tokens: give at least one token"
                        .into(),
            });
        }
        Ok(Clock {
            start: Instant::now(),
            run_seconds0: self.buf.run_seconds,
            prefill_ms: 0.0,
            first_ms: None,
            forwards: 0,
            blocks: 0,
            prompt_tokens,
            prefill_done: false,
        })
    }

    /// NTP: one token per forward.
    pub fn ntp(mut self, max_new: usize, on: &mut dyn FnMut(&Event)) -> Result<Decoded> {
        let mut clock = self.start_clock()?;
        if !self.prefill_chunks(&mut clock)? {
            return Ok(self.finish(Vec::new(), StopReason::Cancelled, clock, on));
        }
        let mut out = Vec::with_capacity(max_new);
        loop {
            if let Some(reason) = self.ntp_step(&mut out, &mut clock, on)? {
                return Ok(self.finish(out, reason, clock, on));
            }
            if out.len() >= max_new {
                return Ok(self.finish(out, StopReason::MaxTokens, clock, on));
            }
        }
    }

    /// One NTP step: feed the pending tokens, commit the next token (the NTP loop, and `auto`'s
    /// NTP choice). Returns why the generation stops, if it does.
    fn ntp_step(
        &mut self,
        out: &mut Vec<u32>,
        clock: &mut Clock,
        on: &mut dyn FnMut(&Event),
    ) -> Result<Option<StopReason>> {
        if self.is_cancelled() {
            return Ok(Some(StopReason::Cancelled));
        }
        let causal = self.pending_into_input();
        self.buf.keep_last(self.input.len());
        if !self.forward(causal, clock, on)? {
            return Ok(Some(StopReason::Cancelled));
        }
        let mask_id = self.model.manifest.mask_token_id;
        let t = match self.grammar.as_mut() {
            None => self.sampler.choose(&self.buf.logits, mask_id, self.context),
            Some(g) => {
                g.masked_row(&self.buf.logits, &mut self.masked)?;
                let t = self.sampler.choose(&self.masked, mask_id, self.context);
                g.accept(t)?;
                t
            }
        };
        let stop = self.emit(&[t], 1, out, clock, on);
        Ok(stop.or_else(|| self.grammar_done().then_some(StopReason::Grammar)))
    }

    /// Score the masked slots before `end` (their logits rows in this forward's kept rows from
    /// `row0` on, in slot order), let `rule` choose, and reveal its choice; `self.scores` keeps
    /// the scored slots in the rule's order. With `dists`, each revealed slot's value is drawn
    /// from the distribution left in `dists[slot]` (verified SBD's sampled drafts). Under a
    /// constraint and without `dists`, the slots from `valid` (the first not committed to the
    /// grammar) on are scored and drawn under the grammar (`score_guided`).
    fn reveal(
        &mut self,
        rule: Selection,
        block: &mut [u32],
        revealed: &mut [bool],
        (valid, end): (usize, usize),
        row0: usize,
        mut dists: Option<&mut [Vec<(f32, u32)>]>,
    ) -> Result<()> {
        let (mask_id, vocab) = (
            self.model.manifest.mask_token_id,
            self.model.manifest.vocab_size,
        );
        self.scores.clear();
        let masked = (0..end).filter(|&s| !revealed[s]);
        for (i, slot) in masked.enumerate() {
            self.scores.push(SlotScore {
                slot,
                row: row0 + i,
                entropy: 0.0,
                confidence: 0.0,
            });
        }
        let guided = match dists {
            None => self.score_guided(block, revealed, valid, end)?,
            Some(_) => 0,
        };
        score_rows(&mut self.scores[guided..], &self.buf.logits, vocab, mask_id);
        let n = select(rule, self.scores);
        for i in 0..n {
            let SlotScore { slot, row, .. } = self.scores[i];
            let logits = &self.buf.logits[row * vocab..(row + 1) * vocab];
            block[slot] = match dists.as_deref_mut() {
                Some(d) => {
                    self.sampler
                        .choose_recorded(logits, mask_id, self.context, &mut d[slot])
                }
                None if guided > 0 && self.drafts[slot] != mask_id => self.drafts[slot],
                None => self.sampler.choose(logits, mask_id, self.context),
            };
            revealed[slot] = true;
        }
        Ok(())
    }

    /// Structured output: score the masked slots from `valid` on under the mask the grammar
    /// would have at each if every slot before it held its value (a revealed slot its token, a
    /// masked one the value drawn for it here under its own mask, kept in `self.drafts`), so
    /// that the selection rule sees the distributions the grammar walk commits from: a slot
    /// where the grammar lets one token through (a key, a quote or a brace after a free value)
    /// scores zero entropy and is revealed in the same forward, and a slot the model only fills
    /// well with a token the grammar forbids no longer looks certain. Stops at a revealed slot
    /// the grammar refuses and where the output is complete; the grammar's state is restored.
    /// Returns how many of `self.scores` (their first ones, in slot order) were scored.
    fn score_guided(
        &mut self,
        block: &[u32],
        revealed: &[bool],
        valid: usize,
        end: usize,
    ) -> Result<usize> {
        let Decoder {
            grammar,
            buf,
            sampler,
            masked,
            context,
            model,
            scores,
            drafts,
            ..
        } = self;
        let Some(g) = grammar.as_mut() else {
            return Ok(0);
        };
        let (mask_id, vocab) = (model.manifest.mask_token_id, model.manifest.vocab_size);
        drafts.clear();
        drafts.resize(end, mask_id);
        g.look_ahead(|g| {
            let mut i = 0;
            for s in valid..end {
                if g.is_done() {
                    break;
                }
                let t = if revealed[s] {
                    block[s]
                } else {
                    let Some(sc) = scores.get_mut(i).filter(|sc| sc.slot == s) else {
                        break;
                    };
                    if g.mask()?.is_zero() {
                        break; // a dead end of the drafts (the walk decides what is committed)
                    }
                    g.masked_row(&buf.logits[sc.row * vocab..(sc.row + 1) * vocab], masked)?;
                    (sc.entropy, sc.confidence) = entropy_confidence(masked, mask_id);
                    i += 1;
                    drafts[s] = sampler.choose(masked, mask_id, context);
                    drafts[s]
                };
                if !g.try_accept(t)? {
                    break;
                }
            }
            Ok(i)
        })
    }

    /// `grammar_walk` after a forward whose masked slots were scored in `self.scores` (their
    /// rows); nothing without a constraint.
    fn walk_revealed(
        &mut self,
        block: &mut [u32],
        revealed: &mut [bool],
        valid: usize,
        end: &mut usize,
        rows: &mut Vec<Option<usize>>,
        dists: Option<&mut [Vec<(f32, u32)>]>,
    ) -> Result<usize> {
        if self.grammar.is_none() {
            return Ok(valid);
        }
        rows.clear();
        rows.resize(*end, None);
        for sc in self.scores.iter() {
            rows[sc.slot] = Some(sc.row);
        }
        self.grammar_walk(block, revealed, valid, end, rows, dists)
    }

    fn grammar_done(&self) -> bool {
        self.grammar.as_ref().is_some_and(Grammar::is_done)
    }

    /// Structured output inside a block (docs/structured-output.md): walk the slots from
    /// `valid` (the first slot not yet committed to the grammar) while they can be committed.
    /// A revealed slot the grammar allows is committed; one it refuses is sampled again under
    /// the exact mask when this forward computed its logits (`rows[slot]`), else masked again.
    /// The leftmost slot that was masked in this forward is revealed under the exact mask
    /// whether or not the selection rule chose it (its logits are conditioned on clean tokens
    /// only). Before a forward (`rows` empty), the tokens the grammar forces fill the masked
    /// slots at `valid`. When the grammar is complete, the block ends at `valid`. Returns the
    /// new `valid`. With `dists` (verified SBD's sampled drafts), each slot committed here gets
    /// in `dists[slot]` the distribution its value was drawn from, the grammar's refusals
    /// included (`refused_mix`; a forced token: itself).
    fn grammar_walk(
        &mut self,
        block: &mut [u32],
        revealed: &mut [bool],
        mut valid: usize,
        end: &mut usize,
        rows: &[Option<usize>],
        mut dists: Option<&mut [Vec<(f32, u32)>]>,
    ) -> Result<usize> {
        let Decoder {
            grammar,
            buf,
            sampler,
            masked,
            context,
            model,
            ..
        } = self;
        let Some(g) = grammar.as_mut() else {
            return Ok(valid);
        };
        let (mask_id, vocab) = (model.manifest.mask_token_id, model.manifest.vocab_size);
        let mut leftmost_seen = false;
        // with `dists`: the distribution under the exact mask, and the mix
        let (mut under_mask, mut mix) = (Vec::new(), Vec::new());
        while valid < *end {
            if g.is_done() {
                *end = valid;
                break;
            }
            let s = valid;
            let row = rows.get(s).copied().flatten();
            let first = row.is_some() && !leftmost_seen;
            leftmost_seen |= row.is_some();
            let mut have_mask = false;
            if let (true, Some(r), Some(d)) = (revealed[s], row, dists.as_deref_mut()) {
                // drawn from d[s] in this forward: kept where the grammar allows it, else drawn
                // again under the exact mask (below)
                g.masked_row(&buf.logits[r * vocab..(r + 1) * vocab], masked)?;
                have_mask = true;
                sampler.distribution(masked, mask_id, context, &mut under_mask);
                let allowed = |t: u32| masked[t as usize] != f32::NEG_INFINITY;
                refused_mix(&d[s], allowed, &under_mask, &mut mix);
                std::mem::swap(&mut d[s], &mut mix);
            }
            if revealed[s] && g.try_accept(block[s])? {
                valid += 1;
                continue;
            }
            match row {
                // refused, or the leftmost masked slot: sample it under the exact mask
                Some(r) if revealed[s] || first => {
                    if !have_mask {
                        g.masked_row(&buf.logits[r * vocab..(r + 1) * vocab], masked)?;
                    }
                    block[s] = match dists.as_deref_mut() {
                        Some(d) if !revealed[s] => {
                            sampler.choose_recorded(masked, mask_id, context, &mut d[s])
                        }
                        _ => sampler.choose(masked, mask_id, context),
                    };
                    revealed[s] = true;
                    g.accept(block[s])?;
                    valid += 1;
                }
                _ if revealed[s] => {
                    // refused, and no logits of it in this forward: masked again
                    block[s] = mask_id;
                    revealed[s] = false;
                    break;
                }
                Some(_) => break, // a later masked slot: the next forward's
                None => {
                    let forced = g.forced_tokens();
                    if forced.is_empty() {
                        break;
                    }
                    for t in forced {
                        if valid >= *end || revealed[valid] {
                            break;
                        }
                        block[valid] = t;
                        revealed[valid] = true;
                        if let Some(d) = dists.as_deref_mut() {
                            d[valid].clear();
                            d[valid].push((1.0, t));
                        }
                        g.accept(t)?;
                        g.forced += 1;
                        valid += 1;
                    }
                }
            }
        }
        Ok(valid)
    }

    /// SBD: blocks of `k` slots, revealed by `rule`; with a policy, each block's size (or an NTP
    /// step instead) is the policy's choice.
    pub fn sbd(
        mut self,
        k: usize,
        rule: Selection,
        max_new: usize,
        mut policy: Option<&mut AutoPolicy>,
        on: &mut dyn FnMut(&Event),
    ) -> Result<Decoded> {
        let mut clock = self.start_clock()?;
        if !self.prefill_chunks(&mut clock)? {
            return Ok(self.finish(Vec::new(), StopReason::Cancelled, clock, on));
        }
        let model = self.model;
        let m = &model.manifest;
        let mask_id = m.mask_token_id;
        let eos = &m.eos_token_ids;
        let mut out = Vec::with_capacity(max_new);
        let mut block: Vec<u32> = Vec::with_capacity(k);
        let mut revealed: Vec<bool> = Vec::with_capacity(k);
        let mut rows: Vec<Option<usize>> = Vec::with_capacity(k);
        while out.len() < max_new {
            let k = match policy.as_deref_mut().map(AutoPolicy::choose) {
                Some(Step::Ntp) => {
                    // one pending token: a decode step (not the prompt's prefill), priced
                    let priced = self.context.len() - self.cache.len() == 1;
                    let t0 = Instant::now();
                    let stop = self.ntp_step(&mut out, &mut clock, on)?;
                    if let (Some(p), true) = (policy.as_deref_mut(), priced) {
                        p.observe_forward(Shape::Ntp, t0.elapsed().as_secs_f64());
                    }
                    if let Some(reason) = stop {
                        return Ok(self.finish(out, reason, clock, on));
                    }
                    continue;
                }
                Some(Step::Block(b)) => b,
                None => k,
            };
            let kk = k.min(max_new - out.len());
            block.clear();
            block.resize(kk, mask_id);
            revealed.clear();
            revealed.resize(kk, false);
            let mut end = kk;
            let mut forwards = 0;
            let mut valid = 0; // slots committed to the grammar (structured output)
            rows.clear();
            loop {
                valid = self.grammar_walk(&mut block, &mut revealed, valid, &mut end, &[], None)?;
                if !revealed[..end].contains(&false) {
                    break;
                }
                if self.is_cancelled() {
                    return Ok(self.finish(out, StopReason::Cancelled, clock, on));
                }
                let t0 = Instant::now();
                let causal = self.pending_into_input();
                // the shapes the cost curve prices: a block's first forward after a block of
                // the same size, and its later forwards, all k slots in play
                let shape = match causal {
                    _ if end != k => None,
                    0 => Some(Shape::Next(k)),
                    c if c == k => Some(Shape::First(k)),
                    _ => None,
                };
                self.input.extend_from_slice(&block[..end]);
                // Only the still-masked slots are read: the rows of the causal tokens and of
                // revealed slots skip the vocabulary projection.
                self.buf
                    .keep((0..end).filter(|&s| !revealed[s]).map(|s| causal + s));
                if !self.forward(causal, &mut clock, on)? {
                    return Ok(self.finish(out, StopReason::Cancelled, clock, on));
                }
                forwards += 1;
                self.reveal(rule, &mut block, &mut revealed, (valid, end), 0, None)?;
                // the forward and the work on its logits: what a step of this shape costs
                if let (Some(p), Some(s)) = (policy.as_deref_mut(), shape) {
                    p.observe_forward(s, t0.elapsed().as_secs_f64());
                }
                valid = self.walk_revealed(
                    &mut block,
                    &mut revealed,
                    valid,
                    &mut end,
                    &mut rows,
                    None,
                )?;
                if let Some(i) = (0..end).find(|&i| revealed[i] && eos.contains(&block[i])) {
                    end = i + 1;
                }
            }
            if let Some(p) = policy.as_deref_mut() {
                if end == k {
                    p.observe(k, end, forwards);
                } else {
                    p.observe_cut();
                }
            }
            clock.blocks += 1;
            if let Some(reason) = self.emit(&block[..end], forwards, &mut out, &mut clock, on) {
                return Ok(self.finish(out, reason, clock, on));
            }
            if self.grammar_done() {
                return Ok(self.finish(out, StopReason::Grammar, clock, on));
            }
        }
        Ok(self.finish(out, StopReason::MaxTokens, clock, on))
    }
}
