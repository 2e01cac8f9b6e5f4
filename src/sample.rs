//! The value of a slot (or of the next token): greedy, temperature, top-k, top-p, repetition
//! penalty, with a seeded RNG. The mask token is never produced.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How token values are drawn. `temperature == 0` is greedy (the paper's setting).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, first maximum on ties); > 0 divides the logits.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    pub top_p: f32,
    /// > 1 makes tokens already in the context less likely (1 = off).
    pub repetition_penalty: f32,
    /// RNG seed (same seed, same options, same model -> same output).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Check every field's range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidOption {
                option: "temperature",
                value: self.temperature.to_string(),
                constraint: "must be a finite number >= 0 (0 = greedy)".into(),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidOption {
                option: "top_p",
                value: self.top_p.to_string(),
                constraint: "must be in (0, 1] (1 = off)".into(),
            });
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::InvalidOption {
                option: "repetition_penalty",
                value: self.repetition_penalty.to_string(),
                constraint: "must be a finite number > 0 (1 = off)".into(),
            });
        }
        Ok(())
    }
}

/// Draws values; owns its scratch buffers so a forward allocates nothing here.
#[derive(Debug)]
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
    row: Vec<f32>,
    order: Vec<(f32, u32)>,
}

/// Index of the largest value, first on ties, skipping `skip` (NaN counts as smallest).
pub fn argmax(row: &[f32], skip: u32) -> u32 {
    // the maximum 8 lanes at a time, then its first index: two cheap passes instead of one
    // branchy one (a 49k-entry row: about 4x faster)
    let sk = skip as usize;
    let (head, tail) = around(row, sk);
    let m = lane_max(head).max(lane_max(tail));
    if m > f32::NEG_INFINITY {
        if let Some(i) = head.iter().position(|&v| v == m) {
            return i as u32;
        }
        if let Some(i) = tail.iter().position(|&v| v == m) {
            return (sk + 1 + i) as u32;
        }
    }
    argmax_scalar(row, skip)
}

/// `argmax` one entry at a time (rows of only -inf and NaN).
fn argmax_scalar(row: &[f32], skip: u32) -> u32 {
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    for (i, &v) in row.iter().enumerate() {
        if i as u32 == skip {
            continue;
        }
        if v > best.0 || best.1 == u32::MAX {
            best = (if v.is_nan() { f32::NEG_INFINITY } else { v }, i as u32);
        }
    }
    best.1
}

/// Entropy (natural log) and confidence (max probability) of the softmax of `row` without `skip`.
/// One exp per entry: with z = sum e^(x-m), H = ln z - sum e^(x-m) (x-m) / z, which is
/// -sum p ln p rewritten. The exps are float32 (`fast_exp`, vectorised) and the sums float64:
/// within 1e-5 nats of the reference decoder's float64 -sum p ln p (tested; the golden cases
/// hold the decisions equal). Entries at -inf (tokens a grammar forbids) count as probability 0.
pub fn entropy_confidence(row: &[f32], skip: u32) -> (f64, f64) {
    let (head, tail) = around(row, skip as usize);
    let m = lane_max(head).max(lane_max(tail));
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for part in [head, tail] {
        // 8 lanes at a time with a branch-free exp that the compiler vectorises: the scoring of
        // a 50k-150k vocabulary is otherwise a visible share of a forward's time
        let mut zl = [0.0f32; 8];
        let mut sl = [0.0f32; 8];
        let chunks = part.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                // an entry 87 or more below the maximum (a probability under 2e-38; a token
                // a grammar forbids is -inf) adds exactly nothing, so that a row with one
                // allowed token has entropy 0, and -inf never makes the sum -inf
                let d = (c[i] - m).max(-87.0);
                let e = if d > -87.0 { fast_exp(d) } else { 0.0 };
                zl[i] += e;
                sl[i] += e * d;
            }
        }
        z += zl.iter().map(|&v| f64::from(v)).sum::<f64>();
        s += sl.iter().map(|&v| f64::from(v)).sum::<f64>();
        for &v in rest {
            let d = (v - m).max(-87.0);
            let e = if d > -87.0 { fast_exp(d) } else { 0.0 };
            z += f64::from(e);
            s += f64::from(e * d);
        }
    }
    (z.ln() - s / z, 1.0 / z)
}

/// The entries of `row` before and after index `skip` (all of it when `skip` is out of range):
/// two contiguous slices, so that loops over them need no per-entry test.
fn around(row: &[f32], skip: usize) -> (&[f32], &[f32]) {
    if skip < row.len() {
        (&row[..skip], &row[skip + 1..])
    } else {
        (row, &row[..0])
    }
}

/// Largest value (NaN-blind), 8 lanes at a time so that it vectorises.
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

/// e^x for x <= 0 (clamped at -87), relative error under 1e-6 for x >= -20 (1e-5 at -87):
/// 2^(x log2 e) split into an integer power (the exponent bits) and a degree-6 polynomial of the
/// remainder in [-0.5, 0.5]. Branch-free, so loops of it vectorise.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E;
    // nearest integer without a libm call (plain SSE2 has no vector floor): floor(t + 0.5) by
    // truncating, then stepping down for negatives
    let h = t + 0.5;
    let i = h as i32;
    let i = i - i32::from(h < i as f32);
    // 2^f on f in [-0.5, 0.5]: Taylor coefficients of e^(f ln 2), truncation error below 2e-7
    let f = t - i as f32;
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11
                    + f * (0.009_618_129 + f * (0.001_333_355_8 + f * 0.000_154_035_3)))));
    let bits = ((i + 127) as u32) << 23;
    f32::from_bits(bits) * p
}

impl Sampler {
    /// A sampler for `cfg` (validated by the caller).
    pub fn new(cfg: Sampling) -> Self {
        Sampler {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            row: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Whether values are the argmax (temperature 0), not drawn.
    pub(crate) fn is_greedy(&self) -> bool {
        self.cfg.temperature == 0.0
    }

    /// The value of one slot from its logits. `context` holds the tokens the repetition
    /// penalty applies to.
    pub fn choose(&mut self, logits: &[f32], mask_id: u32, context: &[u32]) -> u32 {
        match self.prepare(logits, mask_id, context) {
            Prepared::Token(t) => t,
            Prepared::Weights(z) => self.draw(z),
        }
    }

    /// Everything `choose` does before its draw: the token itself when no draw is needed
    /// (greedy, or a degenerate row), else the weights in `self.order` (most likely first,
    /// truncated by top-k and top-p) and their sum.
    fn prepare(&mut self, logits: &[f32], mask_id: u32, context: &[u32]) -> Prepared {
        let c = self.cfg;
        if c.temperature == 0.0 && c.repetition_penalty == 1.0 {
            return Prepared::Token(argmax(logits, mask_id));
        }
        self.row.clear();
        self.row.extend_from_slice(logits);
        if c.repetition_penalty != 1.0 {
            for &t in context {
                if let Some(v) = self.row.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / c.repetition_penalty
                    } else {
                        *v * c.repetition_penalty
                    };
                }
            }
        }
        if c.temperature == 0.0 {
            return Prepared::Token(argmax(&self.row, mask_id));
        }
        self.order.clear();
        for (i, &v) in self.row.iter().enumerate() {
            if i as u32 != mask_id && v.is_finite() {
                self.order.push((v / c.temperature, i as u32));
            }
        }
        self.order
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if c.top_k > 0 {
            self.order.truncate(c.top_k);
        }
        // no finite logit but the mask's (a broken graph's NaN/inf row): the greedy rule's pick
        let Some(&(m, top)) = self.order.first() else {
            return Prepared::Token(argmax(&self.row, mask_id));
        };
        if !m.is_finite() {
            return Prepared::Token(top); // a logit so large that dividing it by the temperature overflowed
        }
        let mut z = 0.0f64;
        for e in self.order.iter_mut() {
            e.0 = (e.0 - m).exp();
            z += f64::from(e.0);
        }
        if c.top_p < 1.0 {
            let mut acc = 0.0f64;
            let mut keep = self.order.len();
            for (j, e) in self.order.iter().enumerate() {
                acc += f64::from(e.0) / z;
                if acc >= f64::from(c.top_p) {
                    keep = j + 1;
                    break;
                }
            }
            self.order.truncate(keep);
            z = self.order.iter().map(|e| f64::from(e.0)).sum();
        }
        Prepared::Weights(z)
    }

    /// One draw from the weights `prepare` left in `self.order` (sum `z`).
    fn draw(&mut self, z: f64) -> u32 {
        let mut u = self.rng.random::<f64>() * z;
        for e in &self.order {
            u -= f64::from(e.0);
            if u <= 0.0 {
                return e.1;
            }
        }
        self.order.last().map_or(0, |e| e.1)
    }

    /// The distribution `choose` draws from, as (probability, token) pairs (one pair of
    /// probability 1 where it needs no draw).
    pub(crate) fn distribution(
        &mut self,
        logits: &[f32],
        mask_id: u32,
        context: &[u32],
        out: &mut Vec<(f32, u32)>,
    ) {
        self.prepare_recorded(logits, mask_id, context, out);
    }

    /// `choose`, also leaving the distribution it drew from in `out` (as `distribution`).
    pub(crate) fn choose_recorded(
        &mut self,
        logits: &[f32],
        mask_id: u32,
        context: &[u32],
        out: &mut Vec<(f32, u32)>,
    ) -> u32 {
        match self.prepare_recorded(logits, mask_id, context, out) {
            Prepared::Token(t) => t,
            Prepared::Weights(z) => self.draw(z),
        }
    }

    /// `prepare`, with its distribution normalised into `out`.
    fn prepare_recorded(
        &mut self,
        logits: &[f32],
        mask_id: u32,
        context: &[u32],
        out: &mut Vec<(f32, u32)>,
    ) -> Prepared {
        out.clear();
        let p = self.prepare(logits, mask_id, context);
        match p {
            Prepared::Token(t) => out.push((1.0, t)),
            Prepared::Weights(z) => out.extend(
                self.order
                    .iter()
                    .map(|&(w, t)| ((f64::from(w) / z) as f32, t)),
            ),
        }
        p
    }

    /// Speculative sampling's check of a drafted token `d` drawn from `q` against the target
    /// distribution `p` (both from `distribution`): `None` keeps it (with probability
    /// min(1, p(d)/q(d))), else `Some` of a token drawn from the residual max(0, p - q),
    /// normalised. Kept or replaced, the token is distributed as `p` (Leviathan et al. 2023).
    /// `dense` is scratch (vocabulary-sized, left all zero).
    pub(crate) fn check(
        &mut self,
        d: u32,
        q: &[(f32, u32)],
        p: &[(f32, u32)],
        dense: &mut Vec<f32>,
    ) -> Option<u32> {
        let prob = |dist: &[(f32, u32)]| {
            dist.iter()
                .find(|e| e.1 == d)
                .map_or(0.0, |e| f64::from(e.0))
        };
        let (pd, qd) = (prob(p), prob(q));
        if qd > 0.0 && self.rng.random::<f64>() * qd < pd {
            return None;
        }
        let top = p
            .iter()
            .chain(q)
            .map(|e| e.1 as usize + 1)
            .max()
            .unwrap_or(0);
        if dense.len() < top {
            dense.resize(top, 0.0);
        }
        for &(w, t) in q {
            dense[t as usize] = w;
        }
        let residual =
            |e: &(f32, u32), dense: &[f32]| f64::from((e.0 - dense[e.1 as usize]).max(0.0));
        let z: f64 = p.iter().map(|e| residual(e, dense)).sum();
        let mut pick = None;
        if z > 0.0 {
            let mut u = self.rng.random::<f64>() * z;
            for e in p {
                u -= residual(e, dense);
                if u <= 0.0 {
                    pick = Some(e.1);
                    break;
                }
            }
        }
        for &(_, t) in q {
            dense[t as usize] = 0.0;
        }
        // p == q up to rounding: the residual is empty, and p's most likely token stands in
        Some(pick.or_else(|| p.first().map(|e| e.1)).unwrap_or(d))
    }
}

/// The distribution of a value drawn from `q` and, where `allowed` refuses it, drawn again from
/// `m` (whose support `allowed` takes whole): q(t) for an allowed t, plus q's refused mass times
/// m(t). Structured output's SBD draws a slot so (`grammar_walk`); verified SBD's sampled check
/// needs it as the slot's draft distribution. `out` gets one entry per token.
pub(crate) fn refused_mix(
    q: &[(f32, u32)],
    allowed: impl Fn(u32) -> bool,
    m: &[(f32, u32)],
    out: &mut Vec<(f32, u32)>,
) {
    out.clear();
    out.extend(q.iter().copied().filter(|e| allowed(e.1)));
    let refused = (1.0 - out.iter().map(|e| f64::from(e.0)).sum::<f64>()).max(0.0) as f32;
    if refused > 0.0 {
        out.sort_unstable_by_key(|e| e.1);
        let kept = out.len();
        for &(w, t) in m {
            match out[..kept].binary_search_by_key(&t, |e| e.1) {
                Ok(i) => out[i].0 += refused * w,
                Err(_) => out.push((refused * w, t)),
            }
        }
    }
}

/// What `Sampler::prepare` leaves for the draw.
#[derive(Clone, Copy)]
enum Prepared {
    /// No draw needed.
    Token(u32),
    /// Weights in `Sampler::order`, with their sum.
    Weights(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speculative sampling: a token drawn from q, kept or replaced by `check`, is distributed
    /// as p, also where q puts mass on tokens p never draws and misses tokens p draws.
    #[test]
    fn checked_drafts_are_distributed_as_the_target() {
        let q = [(0.5f32, 3u32), (0.3, 0), (0.2, 7)];
        let p = [(0.4f32, 0u32), (0.35, 2), (0.25, 3)];
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            seed: 9,
            ..Sampling::default()
        });
        let mut dense = Vec::new();
        let n = 200_000;
        let mut counts = [0usize; 8];
        let mut kept = 0;
        for _ in 0..n {
            let mut u = s.rng.random::<f32>();
            let d = q.iter().find(|e| {
                u -= e.0;
                u <= 0.0
            });
            let d = d.map_or(q[2].1, |e| e.1);
            let t = s.check(d, &q, &p, &mut dense);
            kept += usize::from(t.is_none());
            counts[t.unwrap_or(d) as usize] += 1;
        }
        for (prob, t) in p {
            let f = counts[t as usize] as f32 / n as f32;
            assert!((f - prob).abs() < 0.005, "token {t}: {f} vs {prob}");
        }
        assert_eq!(counts[7] + counts[1], 0);
        // kept with probability sum over x of min(p, q) = 0.3 + 0.25
        let k = kept as f32 / n as f32;
        assert!((k - 0.55).abs() < 0.005, "{k}");
        assert!(dense.iter().all(|&x| x == 0.0));
    }

    /// A draw from q, drawn again from m where it is refused, is distributed as `refused_mix`.
    #[test]
    fn a_refused_draw_drawn_again_is_distributed_as_refused_mix() {
        let q = [(0.5f32, 3u32), (0.3, 0), (0.2, 7)];
        let m = [(0.6f32, 0u32), (0.4, 2)];
        let allowed = |t: u32| t != 3;
        let mut mix = Vec::new();
        refused_mix(&q, allowed, &m, &mut mix);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut draw = |d: &[(f32, u32)]| {
            let mut u = rng.random::<f32>();
            d.iter()
                .find(|e| {
                    u -= e.0;
                    u <= 0.0
                })
                .map_or(d[d.len() - 1].1, |e| e.1)
        };
        let n = 200_000;
        let mut counts = [0usize; 8];
        for _ in 0..n {
            let mut t = draw(&q);
            if !allowed(t) {
                t = draw(&m);
            }
            counts[t as usize] += 1;
        }
        let mut seen: Vec<u32> = mix.iter().map(|e| e.1).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 2, 7], "{mix:?}");
        for (prob, t) in mix {
            let f = counts[t as usize] as f32 / n as f32;
            assert!((f - prob).abs() < 0.005, "token {t}: {f} vs {prob}");
        }
    }

    /// Found by fuzz/fuzz_targets/sampling.rs: a sampled draw from a row with no finite logit
    /// but the mask's indexed an empty list (a panic, SB_ERR_PANIC through the C ABI). Such a
    /// row (a broken graph's NaN/inf output) now gets the greedy rule's pick, and a logit that
    /// overflows when divided by the temperature wins.
    #[test]
    fn rows_without_finite_logits_do_not_panic() {
        let cfg = Sampling {
            temperature: 0.7,
            top_k: 3,
            top_p: 0.9,
            ..Sampling::default()
        };
        let rows: [&[f32]; 4] = [
            &[f32::NAN, f32::NAN, f32::NAN],
            &[f32::INFINITY, f32::NEG_INFINITY, f32::NAN],
            &[1.0, f32::NAN, f32::NEG_INFINITY],
            &[3.0e38, 1.0, 2.0],
        ];
        for row in rows {
            let v = Sampler::new(Sampling {
                temperature: 1e-3,
                ..cfg
            })
            .choose(row, 1, &[]);
            assert!((v as usize) < row.len() && v != 1, "{row:?} -> {v}");
            let v = Sampler::new(cfg).choose(row, 1, &[]);
            assert!((v as usize) < row.len() && v != 1, "{row:?} -> {v}");
        }
        assert_eq!(
            Sampler::new(Sampling {
                temperature: 1e-3,
                ..cfg
            })
            .choose(&[3.0e38, 0.0, 2.0], 1, &[]),
            0
        );
    }

    /// The vectorised entropy equals the plain float64 formula -sum p ln p to 1e-5 nats, on
    /// rows from peaked to flat, with the skipped entry anywhere.
    #[test]
    fn fast_entropy_matches_the_float64_formula() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (n, scale) in [(455usize, 1.0f32), (49_153, 3.0), (1_000, 30.0), (13, 0.01)] {
            let row: Vec<f32> = (0..n)
                .map(|_| rng.random::<f32>() * 2.0 * scale - scale)
                .collect();
            let skip = (n / 3) as u32;
            let m = row
                .iter()
                .enumerate()
                .filter(|&(i, _)| i as u32 != skip)
                .map(|(_, &v)| f64::from(v))
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row
                .iter()
                .enumerate()
                .filter(|&(i, _)| i as u32 != skip)
                .map(|(_, &v)| (f64::from(v) - m).exp())
                .sum();
            let h: f64 = row
                .iter()
                .enumerate()
                .filter(|&(i, _)| i as u32 != skip)
                .map(|(_, &v)| {
                    let p = (f64::from(v) - m).exp() / z;
                    -p * p.ln()
                })
                .sum();
            let (he, c) = entropy_confidence(&row, skip);
            assert!((he - h).abs() < 1e-5, "n {n}: {he} vs {h}");
            assert!((c - 1.0 / z).abs() < 1e-6);
        }
        // f32 argument reduction: the relative error grows with |x| (on terms that are tiny there)
        for (x, tol) in [
            (-87.0f32, 1e-5),
            (-50.0, 5e-6),
            (-10.3, 1e-6),
            (-1.0, 1e-6),
            (-1e-6, 1e-6),
            (0.0, 1e-6),
        ] {
            let want = f64::from(x).exp();
            let rel = (f64::from(fast_exp(x)) - want).abs() / want;
            assert!(rel < tol, "exp({x}): relative error {rel}");
        }
        assert!(fast_exp(-200.0) < 1e-37);
    }

    #[test]
    fn greedy_skips_the_mask_and_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0], 9), 1);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0], 1), 2);
    }

    #[test]
    fn entropy_of_uniform_is_log_n() {
        let (h, c) = entropy_confidence(&[0.0; 4], 9);
        assert!((h - 4f64.ln()).abs() < 1e-12);
        assert!((c - 0.25).abs() < 1e-12);
    }

    #[test]
    fn entries_a_grammar_forbids_count_as_probability_zero() {
        // 20 entries at -inf (forbidden), 4 equal ones: the entropy of 4, not -inf or NaN
        let mut row = vec![f32::NEG_INFINITY; 24];
        for i in [3, 8, 13, 21] {
            row[i] = 1.5;
        }
        let (h, c) = entropy_confidence(&row, 99);
        assert!((h - 4f64.ln()).abs() < 1e-6, "{h}");
        assert!((c - 0.25).abs() < 1e-6, "{c}");
        // one allowed token: a point mass
        let mut one = vec![f32::NEG_INFINITY; 24];
        one[5] = -3.0;
        let (h, c) = entropy_confidence(&one, 99);
        assert!(h == 0.0 && c == 1.0, "{h} {c}");
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_k() {
        let cfg = Sampling {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..Sampling::default()
        };
        let logits = [3.0, 2.9, 2.8, -1.0];
        let draw = |cfg| {
            let mut s = Sampler::new(cfg);
            (0..50)
                .map(|_| s.choose(&logits, 9, &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(cfg);
        assert_eq!(a, draw(cfg));
        assert!(a.iter().all(|&t| t < 2));
        assert!(a.contains(&0) && a.contains(&1));
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_seen_token() {
        let cfg = Sampling {
            repetition_penalty: 2.0,
            ..Sampling::default()
        };
        let mut s = Sampler::new(cfg);
        assert_eq!(s.choose(&[4.0, 3.0], 9, &[0]), 1);
    }
}
