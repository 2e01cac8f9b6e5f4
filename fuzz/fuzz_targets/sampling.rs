//! Slot selection and value sampling with arbitrary logits (NaN, +-inf, all equal, empty rows,
//! any size), masks, contexts and options that pass validation: never a panic; a chosen value
//! is an index of the row and never the mask; a selection reveals 1..=slots.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use setblock::sample::{argmax, entropy_confidence, Sampler};
use setblock::select::{select, SlotScore};
use setblock::{Sampling, Selection};

#[derive(Arbitrary, Debug)]
struct Input {
    logits: Vec<u32>,
    fill: Option<(u32, u16)>,
    mask: u32,
    context: Vec<u32>,
    temperature: f32,
    top_k: u16,
    top_p: f32,
    repetition_penalty: f32,
    seed: u64,
    rule: u8,
    param: f64,
    s: u8,
    slots: Vec<(f64, f64)>,
}

fuzz_target!(|input: Input| {
    let mut row: Vec<f32> = input.logits.iter().map(|&b| f32::from_bits(b)).collect();
    if let Some((bits, n)) = input.fill {
        row.extend(std::iter::repeat_n(f32::from_bits(bits), usize::from(n)));
    }
    let mask = if row.is_empty() {
        input.mask
    } else {
        input.mask % (row.len() as u32 + 1)
    };
    if row.len() >= 2 {
        let a = argmax(&row, mask);
        assert!(
            (a as usize) < row.len() && a != mask,
            "argmax {a} of {} (mask {mask})",
            row.len()
        );
        let (h, c) = entropy_confidence(&row, mask);
        assert!(
            !h.is_nan() || row.iter().any(|v| v.is_nan()),
            "entropy NaN from {row:?}"
        );
        let _ = c;
    }
    let cfg = Sampling {
        temperature: input.temperature,
        top_k: usize::from(input.top_k),
        top_p: input.top_p,
        repetition_penalty: input.repetition_penalty,
        seed: input.seed,
    };
    if cfg.validate().is_ok() && row.len() >= 2 {
        let v = Sampler::new(cfg).choose(&row, mask, &input.context);
        assert!(
            (v as usize) < row.len() && v != mask,
            "value {v} of {} (mask {mask})",
            row.len()
        );
    }
    let rule = match input.rule % 5 {
        0 => Selection::EbEntropy { gamma: input.param },
        1 => Selection::EbConfidence { gamma: input.param },
        2 => Selection::Threshold { tau: input.param },
        3 => Selection::EbLeftToRight { gamma: input.param },
        _ => Selection::TopS {
            s: usize::from(input.s),
        },
    };
    if rule.validate().is_ok() {
        let mut scores: Vec<SlotScore> = input
            .slots
            .iter()
            .take(1024)
            .enumerate()
            .map(|(i, &(entropy, confidence))| SlotScore {
                slot: i,
                row: i,
                entropy,
                confidence,
            })
            .collect();
        let n = select(rule, &mut scores);
        assert!(
            scores.is_empty() && n == 0 || (1..=scores.len()).contains(&n),
            "{n} of {}",
            scores.len()
        );
    }
});
