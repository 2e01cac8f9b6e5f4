//! Verified SBD (`GenerateOptions::verify`): SBD drafts each block as usual, and the model's own
//! NTP outputs check it for free in the forward that starts the next block, where the block's
//! tokens are fed causally anyway (method doc section 3). Each drafted token must equal the NTP
//! choice of the row before it; at the first that does not, the rest of the draft and the new
//! block are dropped, the cache is cut back to the accepted tokens (exact: a position's K/V
//! depends only on earlier tokens) and the NTP choice takes its place. A block's first slot is
//! always the NTP choice of the last causal row, so every forward that checks yields at least one
//! token. With greedy values the output is the model's NTP greedy output, in about as many
//! forwards as SBD takes where its drafts hold. With sampled values a drafted token is kept
//! with probability min(1, p/q) (p: the NTP distribution, q: the one its slot was drawn from)
//! and otherwise replaced by a draw from max(0, p - q): speculative sampling (Leviathan et al.
//! 2023), so the output is distributed as NTP sampling's.
//!
//! Only checked tokens are streamed: a block's first slot as the block begins (so the first token
//! comes after one forward, as in NTP decoding), the rest of it once the next forward has checked
//! it. Until then the draft lives at the end of `context`, fed causally by that forward, never
//! emitted.

use std::time::Instant;

use crate::error::Result;
use crate::policy::{AutoPolicy, Shape, Step};
use crate::select::Selection;
use crate::stream::{Event, StopReason};

use super::{Clock, Decoded, Decoder};

/// The block drafted last, waiting for the forward that checks it.
#[derive(Default)]
struct Draft {
    /// Its tokens after the first (the NTP choice, emitted when the block began) at the end of
    /// `context`, not yet emitted (0: none).
    len: usize,
    /// The block size it was drafted at (0: no block; for the auto policy).
    k: usize,
    /// The forwards that drafted it.
    forwards: usize,
    /// Sampled values: how many of its first tokens the check may keep. A token drawn before a
    /// token left of it was drawn (an out-of-order reveal) is not distributed, given the tokens
    /// before it, as the distribution it was drawn from (the later draw saw it), so the check
    /// stops there and draws from the NTP distribution instead: the output stays distributed
    /// as NTP sampling's. Greedy values: `len`.
    checkable: usize,
}

impl Decoder<'_> {
    /// `finish`, after dropping an unchecked draft from the context (it was never emitted).
    fn finish_verified(
        self,
        draft: &Draft,
        out: Vec<u32>,
        reason: StopReason,
        clock: Clock,
        on: &mut dyn FnMut(&Event),
    ) -> Decoded {
        let keep = self.context.len() - draft.len;
        self.context.truncate(keep);
        self.cache.truncate(keep);
        self.finish(out, reason, clock, on)
    }

    /// Check the draft (the last `len` tokens of the context, fed by the forward just run, whose
    /// kept rows start with the token before it): how many of its tokens are kept, and the NTP
    /// choice after them (`None` when the constraint is complete there). Each drafted token must
    /// be the NTP choice of the row before it (greedy), or pass `Sampler::check` against the
    /// distribution its slot was drawn from (`drawn_from[slot]`, sampled); under a constraint
    /// the choice is the NTP + grammar one, from the state before the draft. Sampled, only the
    /// first `checkable` drafted tokens can be kept (`Draft::checkable`).
    fn check_draft(
        &mut self,
        len: usize,
        checkable: usize,
        drawn_from: &[Vec<(f32, u32)>],
        target: &mut Vec<(f32, u32)>,
        dense: &mut Vec<f32>,
    ) -> Result<(usize, Option<u32>)> {
        let (mask_id, vocab) = (
            self.model.manifest.mask_token_id,
            self.model.manifest.vocab_size,
        );
        let greedy = self.sampler.is_greedy();
        let base = self.context.len() - len;
        if let Some(g) = self.grammar.as_mut() {
            g.rollback(len)?;
        }
        let row = |r: usize| &self.buf.logits[r * vocab..(r + 1) * vocab];
        for i in 0..len {
            let (d, before) = (self.context[base + i], &self.context[..base + i]);
            let logits = match self.grammar.as_mut() {
                Some(g) => {
                    g.masked_row(row(i), &mut self.masked)?;
                    &self.masked[..]
                }
                None => row(i),
            };
            let replaced = if greedy {
                Some(self.sampler.choose(logits, mask_id, before)).filter(|&t| t != d)
            } else {
                // draft token i is block slot i + 1; past the checkable ones, a draw from p
                // (the check against no draft)
                self.sampler.distribution(logits, mask_id, before, target);
                let q = if i < checkable {
                    &drawn_from[i + 1][..]
                } else {
                    &[]
                };
                self.sampler.check(d, q, target, dense)
            };
            if let Some(g) = self.grammar.as_mut() {
                g.accept(replaced.unwrap_or(d))?;
            }
            if replaced.is_some() {
                return Ok((i, replaced));
            }
        }
        if self.grammar_done() {
            return Ok((len, None));
        }
        let next = match self.grammar.as_mut() {
            Some(g) => {
                g.masked_row(row(len), &mut self.masked)?;
                let t = self.sampler.choose(&self.masked, mask_id, self.context);
                g.accept(t)?;
                t
            }
            None => self.sampler.choose(row(len), mask_id, self.context),
        };
        Ok((len, Some(next)))
    }

    /// The SBD loop with every drafted token checked against the model's NTP choice before it
    /// is emitted; with a policy, each step's block size (or an NTP step) is its choice.
    pub fn sbd_verified(
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
        let mask_id = model.manifest.mask_token_id;
        let eos = &model.manifest.eos_token_ids;
        let mut out: Vec<u32> = Vec::with_capacity(max_new);
        let mut block: Vec<u32> = Vec::with_capacity(k);
        let mut revealed: Vec<bool> = Vec::with_capacity(k);
        let mut emitted: Vec<u32> = Vec::with_capacity(k + 1);
        let mut draft = Draft::default();
        let mut rows: Vec<Option<usize>> = Vec::with_capacity(k);
        // sampled values: the distribution each block slot was drawn from, the target one of
        // the token being checked, and scratch (speculative sampling, `Sampler::check`)
        let greedy = self.sampler.is_greedy();
        let mut drawn_from: Vec<Vec<(f32, u32)>> = vec![Vec::new(); if greedy { 0 } else { k }];
        let mut target: Vec<(f32, u32)> = Vec::new();
        let mut dense: Vec<f32> = Vec::new();
        // sampled values: the forward of the block each slot's value was drawn in (`Draft::checkable`)
        let mut when: Vec<usize> = Vec::with_capacity(k);
        // forwards since the last emitted tokens (each Event::Block counts its own)
        let mut since = 0;
        loop {
            if self.is_cancelled() {
                return Ok(self.finish_verified(&draft, out, StopReason::Cancelled, clock, on));
            }
            // this step's block: its first slot is the NTP choice of this forward, the others
            // drafted; none (0) when the output is full or ends, or for an NTP step
            let room = max_new - out.len() - draft.len;
            // a draft that ends the output (EOS, or the constraint complete) is checked alone
            let ends = draft.len > 0
                && (self.context.last().is_some_and(|t| eos.contains(t)) || self.grammar_done());
            let k = if room == 0 || ends {
                0
            } else {
                match policy.as_deref_mut().map(AutoPolicy::choose) {
                    Some(Step::Ntp) => 0,
                    Some(Step::Block(b)) => b,
                    None => k,
                }
            };
            // a block of one slot is an NTP step
            let kk = if k.min(room) < 2 { 0 } else { k.min(room) };
            let t0 = Instant::now();
            let causal = self.pending_into_input();
            let shape = match causal {
                _ if kk != k || k < 2 => None,
                c if c == k => Some(Shape::First(k)),
                _ => None,
            };
            block.clear();
            block.resize(kk, mask_id);
            revealed.clear();
            revealed.resize(kk, false);
            self.input.extend_from_slice(&block);
            // rows: the token before the draft and the draft's (each gives the NTP choice of the
            // token after it), then the block's slots after the first
            let checked = draft.len + 1;
            self.buf
                .keep((causal - checked..causal).chain((1..kk).map(|s| causal + s)));
            if !self.forward(causal, &mut clock, on)? {
                return Ok(self.finish_verified(&draft, out, StopReason::Cancelled, clock, on));
            }
            since += 1;
            let base = self.context.len() - draft.len;
            let (accepted, next) = match self.check_draft(
                draft.len,
                draft.checkable,
                &drawn_from,
                &mut target,
                &mut dense,
            ) {
                Ok(r) => r,
                Err(e) => {
                    // nothing unchecked stays (the session keeps the context to the cache)
                    self.cache.truncate(base);
                    return Err(e);
                }
            };
            let cut = accepted < draft.len;
            if let (Some(p), true) = (policy.as_deref_mut(), draft.k > 0) {
                // what the block yielded: its first slot and the kept draft, and on a cut the
                // correction, for the forward that found it (its own block is dropped)
                let cut = usize::from(cut);
                p.observe(draft.k, 1 + accepted + cut, draft.forwards + cut);
            }
            emitted.clear();
            emitted.extend_from_slice(&self.context[base..base + accepted]);
            self.context.truncate(base);
            self.cache.truncate(base + accepted);
            draft = Draft::default();
            // the NTP choice is emitted now: a correction, an NTP step's token, or the first
            // slot of the block this forward began
            let ended = emitted.last().is_some_and(|t| eos.contains(t));
            if let (false, Some(t), true) = (ended, next, out.len() + emitted.len() < max_new) {
                emitted.push(t);
            }
            if !emitted.is_empty() {
                if let Some(reason) = self.emit(&emitted, since, &mut out, &mut clock, on) {
                    return Ok(self.finish(out, reason, clock, on));
                }
                since = 0;
            }
            if self.grammar_done() {
                return Ok(self.finish(out, StopReason::Grammar, clock, on));
            }
            if out.len() >= max_new {
                return Ok(self.finish(out, StopReason::MaxTokens, clock, on));
            }
            let Some(next) = next.filter(|_| !cut && kk > 0) else {
                // no block, or one begun after a wrong token: its slots are dropped
                continue;
            };
            // the block: slot 0 is the NTP choice (emitted), the others revealed by `rule`
            // from this forward's rows and then by forwards of the block alone; under a
            // constraint, committed to the grammar as in SBD (`grammar_walk`), slot 0 already
            block[0] = next;
            revealed[0] = true;
            let mut end = kk;
            let mut valid = 1;
            let mut forwards = 1;
            when.clear();
            when.resize(kk, usize::MAX);
            when[0] = 0;
            // the rows of the block's masked slots: after the checked ones in the first forward
            let (mut row0, mut t0, mut shape) = (checked, t0, shape);
            loop {
                let record = (!greedy).then_some(&mut drawn_from[..]);
                self.reveal(rule, &mut block, &mut revealed, (valid, end), row0, record)?;
                if let (Some(p), Some(s)) = (policy.as_deref_mut(), shape) {
                    p.observe_forward(s, t0.elapsed().as_secs_f64());
                }
                let record = (!greedy).then_some(&mut drawn_from[..]);
                valid = self.walk_revealed(
                    &mut block,
                    &mut revealed,
                    valid,
                    &mut end,
                    &mut rows,
                    record,
                )?;
                stamp(&mut when, &revealed, forwards);
                if let Some(i) = (0..end).find(|&i| revealed[i] && eos.contains(&block[i])) {
                    end = i + 1;
                }
                let record = (!greedy).then_some(&mut drawn_from[..]);
                valid =
                    self.grammar_walk(&mut block, &mut revealed, valid, &mut end, &[], record)?;
                stamp(&mut when, &revealed, forwards);
                if !revealed[..end].contains(&false) {
                    break;
                }
                if self.is_cancelled() {
                    return Ok(self.finish(out, StopReason::Cancelled, clock, on));
                }
                t0 = Instant::now();
                self.input.clear();
                self.input.extend_from_slice(&block[..end]);
                self.buf.keep((0..end).filter(|&s| !revealed[s]));
                if !self.forward(0, &mut clock, on)? {
                    return Ok(self.finish(out, StopReason::Cancelled, clock, on));
                }
                forwards += 1;
                since += 1;
                row0 = 0;
                shape = (end == k).then_some(Shape::Next(k));
            }
            clock.blocks += 1;
            self.context.extend_from_slice(&block[1..end]);
            // the drafted tokens drawn in slot order (each no earlier than those left of it)
            let checkable = if greedy {
                end - 1
            } else {
                in_order(&when[..end])
            };
            draft = Draft {
                len: end - 1,
                k,
                forwards,
                checkable,
            };
        }
    }
}

/// After a forward (or the forced tokens before one), the `t`-th of its block: the revealed slots
/// that have no forward yet get `t`; masked ones none (`usize::MAX`: a slot masked again is
/// drawn anew later).
fn stamp(when: &mut [usize], revealed: &[bool], t: usize) {
    for (w, &r) in when.iter_mut().zip(revealed) {
        if !r {
            *w = usize::MAX;
        } else if *w == usize::MAX {
            *w = t;
        }
    }
}

/// How many drafted slots (after slot 0) were drawn each in the same forward of the block as the
/// slot before it or a later one, `when` giving each slot's forward.
fn in_order(when: &[usize]) -> usize {
    when.windows(2).take_while(|w| w[1] >= w[0]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_are_checkable_up_to_the_first_slot_drawn_before_one_left_of_it() {
        assert_eq!(in_order(&[0, 1, 1, 1]), 3, "a whole block in one forward");
        assert_eq!(in_order(&[0, 1, 2, 2, 3]), 4, "left to right");
        assert_eq!(in_order(&[0, 2, 1, 3]), 1, "slot 2 drawn before slot 1");
        assert_eq!(in_order(&[0, 1, 3, 2, 4]), 2);
        assert_eq!(in_order(&[0]), 0);
    }

    #[test]
    fn a_slot_masked_again_takes_the_forward_it_is_drawn_again_in() {
        let mut when = vec![0, usize::MAX, usize::MAX, usize::MAX];
        stamp(&mut when, &[true, true, false, true], 1);
        assert_eq!(when, [0, 1, usize::MAX, 1]);
        stamp(&mut when, &[true, true, true, false], 2);
        assert_eq!(when, [0, 1, 2, usize::MAX]);
        stamp(&mut when, &[true, true, true, true], 3);
        assert_eq!(in_order(&when), 3);
    }
}
