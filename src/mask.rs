//! The additive attention mask of one forward: `causal` clean tokens then `block` slots.
//!
//! Shape `[1, 1, n, past + n]` with `n = causal + block`. Clean rows see the whole past and the
//! new clean tokens up to themselves; block rows see the past, every new clean token and every
//! slot of the block (bidirectional). 0 = may attend, `f32::MIN` = blocked (the float mask the
//! graph was exported with; never a bool mask).

/// Fill `out` (cleared first, capacity reused) with the mask.
pub fn fill(out: &mut Vec<f32>, past: usize, causal: usize, block: usize) {
    let n = causal + block;
    let width = past + n;
    out.clear();
    out.resize(n * width, 0.0);
    for r in 0..causal {
        let row = &mut out[r * width..(r + 1) * width];
        for v in &mut row[past + r + 1..] {
            *v = f32::MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_step_matches_the_method() {
        let mut m = Vec::new();
        fill(&mut m, 2, 2, 3);
        let allowed: Vec<String> = m
            .chunks(7)
            .map(|r| {
                r.iter()
                    .map(|&v| if v == 0.0 { '1' } else { '.' })
                    .collect()
            })
            .collect();
        assert_eq!(
            allowed,
            ["111....", "1111...", "1111111", "1111111", "1111111"]
        );
    }

    #[test]
    fn prefill_is_causal() {
        let mut m = Vec::new();
        fill(&mut m, 0, 3, 0);
        assert_eq!(m.iter().filter(|&&v| v == 0.0).count(), 6);
    }
}
