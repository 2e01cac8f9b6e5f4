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

/// Entropy (natural log) and confidence (max probability) of the softmax of `row` without `skip`,
/// in f64. One exp per entry: with z = sum e^(x-m), H = ln z - sum e^(x-m) (x-m) / z, which is
/// -sum p ln p rewritten (the reference decoder computes the latter; the golden tests hold both equal).
pub fn entropy_confidence(row: &[f32], skip: u32) -> (f64, f64) {
    let mut m = f64::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if i as u32 != skip && f64::from(v) > m {
            m = f64::from(v);
        }
    }
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for (i, &v) in row.iter().enumerate() {
        if i as u32 != skip {
            let d = f64::from(v) - m;
            let e = d.exp();
            z += e;
            if e > 0.0 {
                s += e * d;
            }
        }
    }
    (z.ln() - s / z, 1.0 / z)
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

    /// The value of one slot from its logits. `context` holds the tokens the repetition
    /// penalty applies to.
    pub fn choose(&mut self, logits: &[f32], mask_id: u32, context: &[u32]) -> u32 {
        let c = self.cfg;
        if c.temperature == 0.0 && c.repetition_penalty == 1.0 {
            return argmax(logits, mask_id);
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
            return argmax(&self.row, mask_id);
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
        let m = self.order[0].0;
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
        let mut u = self.rng.random::<f64>() * z;
        for e in &self.order {
            u -= f64::from(e.0);
            if u <= 0.0 {
                return e.1;
            }
        }
        self.order.last().map_or(0, |e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
