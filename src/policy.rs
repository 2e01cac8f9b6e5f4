//! The `auto` block policy: per block, NTP or SBD at the block size that maximises expected
//! tokens per second, from the device's measured cost curve and the running tokens per forward.
//!
//! A block of k slots costs one forward of 2k tokens (the previous block's k tokens, committed
//! causally, then k masked slots; k rows of logits kept) and then `k / tau_k - 1` forwards of k
//! tokens, where `tau_k` is the number of tokens a forward reveals at block size k. NTP costs one
//! forward of one token per token. On a CPU a forward of 16-32 tokens can cost 2-4x a forward of
//! one, so a block size that reveals few tokens per forward is slower than NTP there; on a
//! memory-bound device (GPU, NPU, large model) the same block is nearly free.
//!
//! The curve is measured once, at 128 cached positions, by forwards that commit nothing; a
//! decode's forwards run at other context lengths, commit their causal tokens and share the CPU
//! with whatever else runs. So the policy corrects the curve from the forwards it observes
//! ([`AutoPolicy::observe_forward`]): per forward shape, a running factor between observed and
//! measured seconds (a shape never observed takes the factor of all observations), and the
//! [`Model`](crate::Model) keeps the corrected curve for the next generation.

use crate::error::Result;

/// Median seconds of the forwards a block policy chooses between, measured on this device.
#[derive(Debug, Clone, PartialEq)]
pub struct CostCurve {
    /// Cached positions under the timed forwards.
    pub past: usize,
    /// One token, one row of logits: an NTP step.
    pub ntp: f64,
    /// Per candidate block size k: (k, seconds of a 2k-token forward keeping k rows, seconds of
    /// a k-token forward keeping k rows).
    pub blocks: Vec<(usize, f64, f64)>,
}

impl CostCurve {
    /// Seconds of `forwards` forwards at block size `k` that start `blocks` blocks: each block's
    /// first forward carries 2k tokens, the others k. `k` = 1 is NTP (`blocks` is then unused).
    /// `None` when k was not measured.
    pub fn seconds(&self, k: usize, forwards: f64, blocks: f64) -> Option<f64> {
        if k == 1 {
            return Some(forwards * self.ntp);
        }
        let &(_, first, next) = self.blocks.iter().find(|b| b.0 == k)?;
        Some(blocks * first + (forwards - blocks) * next)
    }

    /// Expected tokens per second of block size `k` revealing `tau` tokens per forward; `None`
    /// when k was not measured.
    pub fn sbd_rate(&self, k: usize, tau: f64) -> Option<f64> {
        let forwards = (k as f64 / tau.clamp(1.0, k as f64)).max(1.0);
        Some(k as f64 / self.seconds(k, forwards, 1.0)?)
    }

    /// Tokens per second of NTP decoding.
    pub fn ntp_rate(&self) -> f64 {
        1.0 / self.ntp
    }
}

/// Block sizes the policy measures: powers of two in `[min, max]`, plus `max`.
pub fn candidates(min: usize, max: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (1..=6)
        .map(|e| 1usize << e)
        .filter(|&k| k >= min.max(2) && k <= max)
        .collect();
    if max >= 2 && !out.contains(&max) {
        out.push(max);
    }
    out
}

/// The forward shapes of a decode that the curve prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An NTP step: one token.
    Ntp,
    /// A block's first forward at block size k: the previous block's k tokens, then k slots.
    First(usize),
    /// A later forward of a block of size k: k tokens.
    Next(usize),
}

/// Weight of one observed forward in the running factors.
const LEARN: f64 = 0.2;
/// One observation moves a factor by at most this ratio either way (a forward preempted by
/// another process must not swing the policy).
const STEP_LIMIT: f64 = 2.0;

/// Running correction of a [`CostCurve`]: per shape, the log of observed over measured seconds.
#[derive(Debug, Clone, PartialEq)]
struct Learned {
    ntp: Option<f64>,
    /// Per block size of the curve: (first, next).
    blocks: Vec<(usize, Option<f64>, Option<f64>)>,
    /// Over every observation: the factor of a shape not yet observed.
    all: Option<f64>,
}

impl Learned {
    fn new(curve: &CostCurve) -> Self {
        Learned {
            ntp: None,
            blocks: curve.blocks.iter().map(|b| (b.0, None, None)).collect(),
            all: None,
        }
    }

    fn update(slot: &mut Option<f64>, log_ratio: f64) {
        *slot = Some(match *slot {
            None => log_ratio,
            Some(old) => {
                let lim = STEP_LIMIT.ln() / LEARN;
                old + LEARN * (log_ratio - old).clamp(-lim, lim)
            }
        });
    }
}

/// What the policy decided for the next block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One NTP forward, one token.
    Ntp,
    /// One SBD block of this size.
    Block(usize),
}

/// Running state of the `auto` policy during one generation.
#[derive(Debug, Clone)]
pub struct AutoPolicy {
    curve: CostCurve,
    /// Corrections from observed forward times; `None` when learning is off.
    learned: Option<Learned>,
    /// `curve` with the corrections applied, refreshed in place as forwards are observed (so
    /// `choose` allocates nothing).
    live: CostCurve,
    /// Per candidate k: decayed (tokens, forwards) observed at that block size.
    seen: Vec<(usize, f64, f64)>,
    /// NTP steps taken since the last SBD block (a block is retried after `retry_after` of them).
    ntp_run: usize,
    /// NTP steps before the next retry of a block: `RETRY`, doubled after each retry that did not
    /// pay (up to `RETRY_MAX`), back to `RETRY` when one does.
    retry_after: usize,
    /// The block in flight was a retry, not a block predicted to pay.
    probing: bool,
    /// Per candidate k (as `seen`): blocks run at other sizes since k was last run.
    idle: Vec<usize>,
}

/// What an `auto` generation learned of the text, for the next generation of the same session:
/// per block size the decayed (tokens, forwards) observed, and the retry interval. Without it
/// every generation starts optimistic and tries each block size again, which on a device where
/// blocks cannot pay (int4 on a CPU) costs more than it ever wins back on short answers.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoMemory {
    seen: Vec<(usize, f64, f64)>,
    retry_after: usize,
    idle: Vec<(usize, usize)>,
}

/// NTP steps after which the best SBD block size is tried again (the text may have become
/// more predictable).
const RETRY: usize = 32;
/// The longest interval between retries.
const RETRY_MAX: usize = 1024;
/// Weight of the past per observed block: recent blocks count more.
const DECAY: f64 = 0.8;
/// Blocks at other sizes after which a block size is run once more, where it could pay more
/// than the size chosen: its estimate is only updated when it runs, so a few bad blocks (or,
/// for a size never run, the nearest size's rate) would otherwise retire it for good (the demo
/// int4 with the fused attention: blocks of 4 at 3.5-4 tokens a forward chosen for good over
/// blocks of 8, estimated at 5.3 or at 4 when never run, while they averaged 7.7 under fixed SBD).
const STALE: usize = 8;

impl AutoPolicy {
    /// A fresh policy over `curve`, correcting it from observed forward times.
    pub fn new(curve: CostCurve) -> Self {
        let seen: Vec<_> = curve.blocks.iter().map(|b| (b.0, 0.0, 0.0)).collect();
        let seen_len = seen.len();
        AutoPolicy {
            learned: Some(Learned::new(&curve)),
            live: curve.clone(),
            curve,
            seen,
            ntp_run: 0,
            retry_after: RETRY,
            probing: false,
            idle: vec![0; seen_len],
        }
    }

    /// Start from what an earlier generation learned (its block sizes that this one also has).
    pub fn remember(&mut self, memory: &AutoMemory) {
        for s in self.seen.iter_mut() {
            if let Some(m) = memory.seen.iter().find(|m| m.0 == s.0) {
                *s = *m;
            }
        }
        self.retry_after = memory.retry_after;
        for (s, idle) in self.seen.iter().zip(self.idle.iter_mut()) {
            if let Some(m) = memory.idle.iter().find(|m| m.0 == s.0) {
                *idle = m.1;
            }
        }
    }

    /// What this generation learned, for the next one.
    pub fn memory(&self) -> AutoMemory {
        AutoMemory {
            seen: self.seen.clone(),
            retry_after: self.retry_after,
            idle: self
                .seen
                .iter()
                .map(|s| s.0)
                .zip(self.idle.clone())
                .collect(),
        }
    }

    /// A policy that decides from `curve` as measured, ignoring observed forward times.
    pub fn fixed(curve: CostCurve) -> Self {
        AutoPolicy {
            learned: None,
            ..Self::new(curve)
        }
    }

    /// Record one forward of the decode: its shape and its seconds (the whole forward call, as
    /// the curve timed it). Shapes the curve does not price are ignored.
    pub fn observe_forward(&mut self, shape: Shape, seconds: f64) {
        let Some(l) = self.learned.as_mut() else {
            return;
        };
        let measured = match shape {
            Shape::Ntp => Some(self.curve.ntp),
            Shape::First(k) | Shape::Next(k) => {
                self.curve.blocks.iter().find(|b| b.0 == k).map(|b| {
                    if matches!(shape, Shape::First(_)) {
                        b.1
                    } else {
                        b.2
                    }
                })
            }
        };
        let Some(measured) = measured else { return };
        if !(seconds.is_finite() && seconds > 0.0) {
            return;
        }
        let r = (seconds / measured).ln();
        match shape {
            Shape::Ntp => Learned::update(&mut l.ntp, r),
            Shape::First(k) | Shape::Next(k) => {
                if let Some(b) = l.blocks.iter_mut().find(|b| b.0 == k) {
                    let slot = if matches!(shape, Shape::First(_)) {
                        &mut b.1
                    } else {
                        &mut b.2
                    };
                    Learned::update(slot, r);
                }
            }
        }
        Learned::update(&mut l.all, r);
        self.refresh();
    }

    /// Recompute `live` from `curve` and the corrections, in place.
    fn refresh(&mut self) {
        let Some(l) = &self.learned else { return };
        let f = |own: Option<f64>| own.or(l.all).map_or(1.0, f64::exp);
        self.live.ntp = self.curve.ntp * f(l.ntp);
        for ((live, &(_, a, b)), &(_, la, lb)) in self
            .live
            .blocks
            .iter_mut()
            .zip(&self.curve.blocks)
            .zip(&l.blocks)
        {
            live.1 = a * f(la);
            live.2 = b * f(lb);
        }
    }

    /// The curve as corrected so far (the measured one when learning is off or nothing was
    /// observed).
    pub fn corrected(&self) -> CostCurve {
        self.live.clone()
    }

    /// Tokens per forward expected at block size `k`: the observed rate where there is one;
    /// else that of the nearest observed block size, capped at k; else k (optimistic, so an
    /// untried size gets tried once).
    pub fn tau(&self, k: usize) -> f64 {
        let rate = |&(_, t, f): &(usize, f64, f64)| (f > 0.0).then(|| t / f);
        if let Some(r) = self.seen.iter().find(|s| s.0 == k).and_then(rate) {
            return r;
        }
        self.seen
            .iter()
            .filter_map(|s| rate(s).map(|r| (s.0.abs_diff(k), r)))
            .min_by_key(|&(d, _)| d)
            .map_or(k as f64, |(_, r)| r.min(k as f64))
    }

    /// The next step: the choice with the highest expected tokens per second.
    pub fn choose(&mut self) -> Step {
        let curve = &self.live;
        let best = curve
            .blocks
            .iter()
            .filter_map(|&(k, ..)| Some((k, curve.sbd_rate(k, self.tau(k))?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if std::env::var("SB_DEBUG_AUTO").is_ok() {
            eprintln!(
                "AUTO best {:?} ntp {:.0} ntp_run {} retry {} taus {:?} live {:?} learned {:?}",
                best,
                curve.ntp_rate(),
                self.ntp_run,
                self.retry_after,
                self.seen
                    .iter()
                    .map(|s| (s.0, if s.2 > 0.0 { s.1 / s.2 } else { -1.0 }))
                    .collect::<Vec<_>>(),
                curve,
                self.learned
            );
        }
        match best {
            Some((k, rate)) if rate > curve.ntp_rate() || self.ntp_run >= self.retry_after => {
                self.probing = rate <= curve.ntp_rate();
                self.ntp_run = 0;
                let k = if self.probing {
                    k
                } else {
                    self.stale(k, rate).unwrap_or(k)
                };
                for (s, idle) in self.seen.iter().zip(self.idle.iter_mut()) {
                    *idle = if s.0 == k { 0 } else { *idle + 1 };
                }
                Step::Block(k)
            }
            _ => {
                self.ntp_run += 1;
                Step::Ntp
            }
        }
    }

    /// A block size other than `k` (rate `rate`) not run in the last `STALE` blocks that would
    /// beat `rate` revealing its whole block a forward; the longest idle. Never-run sizes too: the
    /// estimate of a size not yet run is the nearest run size's rate, capped at its k, so a
    /// larger size that first lost to a smaller one (on the curve alone) would never be run.
    fn stale(&self, k: usize, rate: f64) -> Option<usize> {
        self.seen
            .iter()
            .zip(&self.idle)
            .filter(|(s, &idle)| s.0 != k && idle >= STALE)
            .filter(|(s, _)| {
                self.live
                    .sbd_rate(s.0, s.0 as f64)
                    .is_some_and(|r| r > rate)
            })
            .max_by_key(|(s, &idle)| (idle, s.0))
            .map(|(s, _)| s.0)
    }

    /// Record a finished block: `tokens` revealed in `forwards` forwards at block size `k`.
    pub fn observe(&mut self, k: usize, tokens: usize, forwards: usize) {
        if let Some(s) = self.seen.iter_mut().find(|s| s.0 == k) {
            s.1 = s.1 * DECAY + tokens as f64;
            s.2 = s.2 * DECAY + forwards as f64;
        }
        if std::mem::take(&mut self.probing) {
            let pays = self
                .live
                .sbd_rate(k, self.tau(k))
                .is_some_and(|r| r > self.live.ntp_rate());
            self.retry_after = if pays {
                RETRY
            } else {
                (self.retry_after * 2).min(RETRY_MAX)
            };
        }
    }

    /// A block the text ended inside (EOS, or the token limit cut it to fewer than k slots): not
    /// counted. Its tokens per forward measure where the answer ended, not what blocks of k
    /// reveal, and since every answer's last block is one, the most recent block (the one
    /// weighted most, and remembered into the next generation) would make every size look worse
    /// than it is. A retry in flight is inconclusive: the next one comes after the same interval.
    pub fn observe_cut(&mut self) {
        self.probing = false;
    }

    /// The cost curve it started from.
    pub fn curve(&self) -> &CostCurve {
        &self.curve
    }

    /// Whether it corrects the curve from observed forwards.
    pub fn learns(&self) -> bool {
        self.learned.is_some()
    }
}

/// Check helper for callers measuring a curve: every time must be finite and positive.
pub(crate) fn checked(curve: CostCurve) -> Result<CostCurve> {
    let ok = curve.ntp.is_finite()
        && curve.ntp > 0.0
        && curve
            .blocks
            .iter()
            .all(|&(_, a, b)| a.is_finite() && a > 0.0 && b.is_finite() && b > 0.0);
    if ok {
        Ok(curve)
    } else {
        Err(crate::error::Error::Runtime(format!(
            "the measured cost curve holds a non-positive time: {curve:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU-like curve: a 2k-token forward costs 1 + 0.1 * 2k units.
    fn cpu() -> CostCurve {
        let t = |n: usize| 1.0 + 0.1 * n as f64;
        CostCurve {
            past: 0,
            ntp: t(1),
            blocks: [2, 4, 8, 16].iter().map(|&k| (k, t(2 * k), t(k))).collect(),
        }
    }

    /// A GPU-like curve: every forward costs the same.
    fn flat() -> CostCurve {
        CostCurve {
            past: 0,
            ntp: 1.0,
            blocks: [2, 4, 8, 16].iter().map(|&k| (k, 1.0, 1.0)).collect(),
        }
    }

    #[test]
    fn candidates_are_powers_of_two_within_the_trained_range() {
        assert_eq!(candidates(2, 16), vec![2, 4, 8, 16]);
        assert_eq!(candidates(4, 12), vec![4, 8, 12]);
        assert_eq!(candidates(1, 1), Vec::<usize>::new());
    }

    #[test]
    fn flat_cost_picks_the_largest_block_that_reveals_the_most() {
        let mut p = AutoPolicy::new(flat());
        assert_eq!(p.choose(), Step::Block(16), "untried sizes are optimistic");
        p.observe(16, 16, 4); // tau 4 at k = 16
                              // k=16 at tau 4 costs 4 forwards per 16 tokens; k=8 is predicted tau min(8, 4) = 4 too
        assert_eq!(p.choose(), Step::Block(16));
    }

    #[test]
    fn a_block_that_reveals_one_token_per_forward_loses_to_ntp_on_a_cpu() {
        let mut p = AutoPolicy::new(cpu());
        for k in [16, 8, 4, 2] {
            p.observe(k, k, k); // tau = 1 everywhere
        }
        assert_eq!(p.choose(), Step::Ntp);
        // ...and a block is retried after RETRY NTP steps
        for _ in 1..RETRY {
            assert_eq!(p.choose(), Step::Ntp);
        }
        let Step::Block(k) = p.choose() else {
            panic!("a retry was due")
        };
        // a retry that does not pay doubles the wait before the next one
        p.observe(k, k, k);
        for _ in 0..2 * RETRY {
            assert_eq!(p.choose(), Step::Ntp);
        }
        assert!(matches!(p.choose(), Step::Block(_)));
    }

    #[test]
    fn the_next_generation_starts_from_what_this_one_learned() {
        let mut p = AutoPolicy::new(cpu());
        for k in [16, 8, 4, 2] {
            p.observe(k, k, k);
        }
        let memory = p.memory();
        // a fresh policy is optimistic about untried sizes...
        assert!(matches!(AutoPolicy::new(cpu()).choose(), Step::Block(_)));
        // ...one that remembers starts with NTP
        let mut q = AutoPolicy::new(cpu());
        q.remember(&memory);
        assert_eq!(q.choose(), Step::Ntp);
        assert_eq!(q.memory(), memory);
    }

    #[test]
    fn the_rate_follows_the_cost_model() {
        let c = cpu();
        // k = 8, tau = 4: one 16-token forward (2.6) + one 8-token forward (1.8) for 8 tokens
        let r = c.sbd_rate(8, 4.0).unwrap();
        assert!((r - 8.0 / 4.4).abs() < 1e-12, "{r}");
        assert!(c.sbd_rate(3, 1.0).is_none());
        assert!((c.ntp_rate() - 1.0 / 1.1).abs() < 1e-12);
    }

    #[test]
    fn observed_forward_times_correct_the_curve() {
        // blocks reveal one token per forward: on the measured curve NTP wins
        let mut p = AutoPolicy::new(cpu());
        for k in [16, 8, 4, 2] {
            p.observe(k, k, k);
        }
        assert_eq!(p.choose(), Step::Ntp);
        // the device's NTP steps really cost 3x: a uniform slowdown changes no decision
        for _ in 0..20 {
            p.observe_forward(Shape::Ntp, 3.0 * cpu().ntp);
        }
        assert_eq!(p.choose(), Step::Ntp);
        let c = p.corrected();
        assert!((c.ntp / cpu().ntp - 3.0).abs() < 1e-9, "{c:?}");
        // a block shape never observed takes the factor of all observations
        assert!((c.blocks[2].2 / cpu().blocks[2].2 - 3.0).abs() < 1e-9);
        // ...until its own forwards say otherwise: blocks cost what was measured
        for _ in 0..20 {
            p.observe_forward(Shape::First(8), cpu().blocks[2].1);
            p.observe_forward(Shape::Next(8), cpu().blocks[2].2);
        }
        let c = p.corrected();
        assert!((c.blocks[2].1 / cpu().blocks[2].1 - 1.0).abs() < 1e-6);
        assert!(matches!(p.choose(), Step::Block(_)), "{c:?}");
        // a fixed policy ignores what it observes
        let mut f = AutoPolicy::fixed(cpu());
        f.observe_forward(Shape::Ntp, 100.0);
        assert_eq!(f.corrected(), cpu());
        assert!(!f.learns());
    }

    #[test]
    fn one_outlier_moves_a_factor_by_a_bounded_ratio() {
        let mut p = AutoPolicy::new(cpu());
        p.observe_forward(Shape::Ntp, cpu().ntp);
        p.observe_forward(Shape::Ntp, 1000.0 * cpu().ntp); // a forward preempted for a while
        let f = p.corrected().ntp / cpu().ntp;
        assert!(f > 1.0 && f <= STEP_LIMIT + 1e-9, "{f}");
        p.observe_forward(Shape::Next(3), 1.0); // not a priced shape: ignored
        p.observe_forward(Shape::Ntp, f64::NAN);
        assert_eq!(p.corrected().ntp / cpu().ntp, f);
    }

    #[test]
    fn a_block_size_whose_estimate_went_stale_is_run_again() {
        // cpu() without 16: 8 is the best size when blocks reveal everything
        let mut curve = cpu();
        curve.blocks.retain(|b| b.0 <= 8);
        let mut p = AutoPolicy::new(curve);
        p.observe(2, 2, 2);
        p.observe(8, 8, 4); // two bad blocks of 8: tau 2
        p.observe(4, 4, 1); // blocks of 4 reveal everything
        let mut eights = 0;
        for _ in 0..40 {
            match p.choose() {
                Step::Block(8) => {
                    eights += 1;
                    p.observe(8, 8, 1) // ...and so do blocks of 8, once run again
                }
                Step::Block(k) => p.observe(k, k, 1),
                Step::Ntp => panic!("blocks pay here"),
            }
        }
        // run again every STALE blocks until its estimate recovers, then chosen for what it is
        assert!(eights > 40 / (STALE + 1) + 1, "{eights} blocks of 8 in 40");
        assert_eq!(p.choose(), Step::Block(8));
        assert!(p.tau(8) > 7.0, "{}", p.tau(8));
        // 2 was observed too, but would not beat 4 even revealing its whole block: never run
        assert_eq!(p.seen[0], (2, 2.0, 2.0));
        // the idle counts travel with the memory to the next generation
        let mut q = AutoPolicy::new(p.curve.clone());
        q.remember(&p.memory());
        assert_eq!(q.memory(), p.memory());
    }

    #[test]
    fn a_block_the_text_ended_in_is_not_counted() {
        let mut p = AutoPolicy::new(cpu());
        for k in [16, 8, 4, 2] {
            p.observe(k, k, 1);
        }
        let before = p.memory();
        p.observe_cut();
        assert_eq!(p.memory(), before);
        // a retry cut short neither doubles nor resets the interval
        let mut q = AutoPolicy::new(cpu());
        for k in [16, 8, 4, 2] {
            q.observe(k, k, k);
        }
        for _ in 0..RETRY {
            assert_eq!(q.choose(), Step::Ntp);
        }
        assert!(matches!(q.choose(), Step::Block(_)));
        q.observe_cut();
        assert_eq!(q.memory().retry_after, RETRY);
    }

    #[test]
    fn observed_rates_decay_toward_recent_blocks() {
        let mut p = AutoPolicy::new(flat());
        p.observe(8, 8, 8);
        assert!((p.tau(8) - 1.0).abs() < 1e-12);
        for _ in 0..30 {
            p.observe(8, 8, 2);
        }
        assert!(p.tau(8) > 3.9);
        assert!(
            (p.tau(4) - 4.0).abs() < 0.1,
            "nearest observed, capped at k"
        );
    }
}
