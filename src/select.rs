//! Which masked slots to reveal after a forward (method doc section 4).

use crate::error::{Error, Result};

/// The slot-selection rule of the SBD loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// EB-Sampler: sort by entropy, reveal the largest prefix whose entropies before the last
    /// one sum to at most gamma (0 = one slot per forward; infinity = the whole block).
    EbEntropy {
        /// Entropy budget (nats).
        gamma: f64,
    },
    /// Same budget, slots ordered by confidence (max probability) instead of entropy.
    EbConfidence {
        /// Entropy budget (nats).
        gamma: f64,
    },
    /// Same budget, slots taken left to right: the leftmost masked slot and then its right
    /// neighbours while the entropies before the last one sum to at most gamma. The block is
    /// filled in order, as a next-token decoder would (gamma 0 = one slot per forward, the
    /// leftmost); a model whose any-order predictions are weaker than its left-to-right ones
    /// keeps more of its accuracy this way.
    EbLeftToRight {
        /// Entropy budget (nats).
        gamma: f64,
    },
    /// Fast-dLLM rule: reveal every slot whose confidence is at least `tau` (at least one).
    Threshold {
        /// Confidence threshold in (0, 1].
        tau: f64,
    },
    /// Reveal a fixed number of slots per forward (lowest entropy first).
    TopS {
        /// Slots per forward (>= 1).
        s: usize,
    },
}

impl Selection {
    /// Check the parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, value: String, constraint: &str| {
            Err(Error::InvalidOption {
                option,
                value,
                constraint: constraint.into(),
            })
        };
        match *self {
            Selection::EbEntropy { gamma }
            | Selection::EbConfidence { gamma }
            | Selection::EbLeftToRight { gamma }
                if gamma.is_nan() || gamma < 0.0 =>
            {
                bad(
                    "gamma",
                    gamma.to_string(),
                    "must be >= 0 (0 = one slot per forward; inf = a whole block)",
                )
            }
            Selection::Threshold { tau } if tau.is_nan() || tau <= 0.0 || tau > 1.0 => {
                bad("threshold", tau.to_string(), "must be in (0, 1]")
            }
            Selection::TopS { s: 0 } => bad("top_s", "0".into(), "must be >= 1"),
            _ => Ok(()),
        }
    }
}

/// What the selection rule knows of one masked slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotScore {
    /// Index of the slot in its block.
    pub slot: usize,
    /// Row of its logits in the forward's kept rows.
    pub row: usize,
    /// Entropy (nats) of its distribution (mask token excluded).
    pub entropy: f64,
    /// Its largest probability.
    pub confidence: f64,
}

/// Reorder `scores` and return how many of the first ones to reveal (>= 1 when not empty).
pub fn select(rule: Selection, scores: &mut [SlotScore]) -> usize {
    if scores.is_empty() {
        return 0;
    }
    let by_entropy =
        |a: &SlotScore, b: &SlotScore| a.entropy.total_cmp(&b.entropy).then(a.slot.cmp(&b.slot));
    let by_confidence = |a: &SlotScore, b: &SlotScore| {
        b.confidence
            .total_cmp(&a.confidence)
            .then(a.slot.cmp(&b.slot))
    };
    let budget = |scores: &[SlotScore], gamma: f64| {
        let mut acc = scores[0].entropy;
        let mut n = 1;
        for s in &scores[1..] {
            if acc > gamma {
                break;
            }
            acc += s.entropy;
            n += 1;
        }
        n
    };
    match rule {
        Selection::EbEntropy { gamma } => {
            scores.sort_by(by_entropy);
            budget(scores, gamma)
        }
        Selection::EbConfidence { gamma } => {
            scores.sort_by(by_confidence);
            budget(scores, gamma)
        }
        Selection::EbLeftToRight { gamma } => {
            scores.sort_by_key(|s| s.slot);
            budget(scores, gamma)
        }
        Selection::Threshold { tau } => {
            scores.sort_by(by_confidence);
            scores
                .iter()
                .take_while(|s| s.confidence >= tau)
                .count()
                .max(1)
        }
        Selection::TopS { s } => {
            scores.sort_by(by_entropy);
            s.min(scores.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(h: &[f64]) -> Vec<SlotScore> {
        h.iter()
            .enumerate()
            .map(|(slot, &entropy)| SlotScore {
                slot,
                row: slot,
                entropy,
                confidence: (-entropy).exp(),
            })
            .collect()
    }

    #[test]
    fn eb_budget_counts_all_but_the_last_revealed() {
        let mut s = scores(&[0.3, 0.1, 0.5, 2.0]);
        // sorted 0.1, 0.3, 0.5, 2.0: 0.1 <= 0.4 -> take 0.3; 0.4 <= 0.4 -> take 0.5; 0.9 > 0.4 stop
        assert_eq!(select(Selection::EbEntropy { gamma: 0.4 }, &mut s), 3);
        assert_eq!(s.iter().map(|x| x.slot).collect::<Vec<_>>(), [1, 0, 2, 3]);
        assert_eq!(
            select(
                Selection::EbEntropy { gamma: 0.0 },
                &mut scores(&[0.0, 0.0])
            ),
            2
        );
        assert_eq!(
            select(
                Selection::EbEntropy { gamma: 0.0 },
                &mut scores(&[0.1, 0.1])
            ),
            1
        );
        assert_eq!(
            select(
                Selection::EbEntropy {
                    gamma: f64::INFINITY
                },
                &mut scores(&[9.0; 5])
            ),
            5
        );
    }

    #[test]
    fn left_to_right_takes_the_leftmost_slot_first_and_stops_at_the_budget() {
        // slots 2, 0, 3, 1 arrive out of order; the lowest entropy (slot 3) is not taken first
        let mut s = scores(&[0.3, 0.1, 0.5, 0.0]);
        s.swap(0, 2);
        s.swap(1, 3);
        // in slot order 0.3, 0.1, 0.5, 0.0: 0.3 <= 0.4 -> take 0.1; 0.4 <= 0.4 -> take 0.5; stop
        assert_eq!(select(Selection::EbLeftToRight { gamma: 0.4 }, &mut s), 3);
        assert_eq!(s.iter().map(|x| x.slot).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // gamma 0: the leftmost slot alone, however confident its neighbours are
        let mut s = scores(&[2.0, 0.0, 0.0]);
        assert_eq!(select(Selection::EbLeftToRight { gamma: 0.0 }, &mut s), 1);
        assert_eq!(s[0].slot, 0);
        assert!(Selection::EbLeftToRight { gamma: -0.1 }.validate().is_err());
    }

    #[test]
    fn threshold_and_top_s() {
        assert_eq!(
            select(Selection::Threshold { tau: 0.9 }, &mut scores(&[5.0, 6.0])),
            1
        );
        assert_eq!(
            select(
                Selection::Threshold { tau: 0.5 },
                &mut scores(&[0.01, 0.02, 3.0])
            ),
            2
        );
        assert_eq!(
            select(Selection::TopS { s: 2 }, &mut scores(&[1.0, 2.0, 3.0])),
            2
        );
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        assert!(Selection::EbEntropy { gamma: -1.0 }.validate().is_err());
        assert!(Selection::EbEntropy { gamma: f64::NAN }.validate().is_err());
        assert!(Selection::Threshold { tau: 0.0 }.validate().is_err());
        assert!(Selection::TopS { s: 0 }.validate().is_err());
    }
}
