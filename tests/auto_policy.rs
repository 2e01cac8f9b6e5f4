//! The `auto` block policy end to end on the fixture, with cost curves set by hand so that the
//! choice is known: NTP where a block forward is expensive, SBD where forwards cost the same.

mod common;

use std::sync::Arc;

use setblock::{CostCurve, GenerateOptions, LoadOptions, Mode, Model, Selection, Session};

fn model_with(curve: CostCurve) -> Arc<Model> {
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let m = Model::load(common::fixture(), &opts).unwrap();
    m.set_cost_curve(curve).unwrap();
    Arc::new(m)
}

fn opts(mode: Mode, gamma: f64) -> GenerateOptions {
    GenerateOptions {
        mode,
        block_size: Some(8),
        selection: Some(Selection::EbEntropy { gamma }),
        max_new_tokens: 24,
        chat_template: Some(false),
        ..GenerateOptions::default()
    }
}

/// A random-weight fixture reveals about one slot per forward at small gammas; a large one
/// reveals several.
fn run(model: &Arc<Model>, mode: Mode, gamma: f64) -> setblock::Output {
    let mut s = Session::new(model.clone()).unwrap();
    s.generate(&common::golden()[0].prompt, &opts(mode, gamma), |_| {})
        .unwrap()
}

#[test]
fn expensive_blocks_make_auto_decode_exactly_like_ntp() {
    // a k-token forward costs k times a 1-token one: no block size can beat NTP
    let m = model_with(CostCurve {
        past: 0,
        ntp: 1.0,
        blocks: [2, 4, 8]
            .iter()
            .map(|&k| (k, 2.0 * k as f64, k as f64))
            .collect(),
    });
    let auto = run(&m, Mode::Auto, 5.0);
    let ntp = run(&m, Mode::Ntp, 5.0);
    assert_eq!(auto.tokens, ntp.tokens);
    assert_eq!(auto.stats.forward_passes, ntp.stats.forward_passes);
    assert_eq!(auto.stats.sbd_blocks, 0);
}

#[test]
fn free_blocks_make_auto_decode_in_blocks_with_fewer_forwards() {
    let m = model_with(CostCurve {
        past: 0,
        ntp: 1.0,
        blocks: [2, 4, 8].iter().map(|&k| (k, 1.0, 1.0)).collect(),
    });
    let auto = run(&m, Mode::Auto, 5.0);
    let ntp = run(&m, Mode::Ntp, 5.0);
    assert!(auto.stats.sbd_blocks > 0);
    assert!(
        auto.stats.forward_passes < ntp.stats.forward_passes,
        "auto {} vs ntp {}",
        auto.stats.forward_passes,
        ntp.stats.forward_passes
    );
    // the first block is the largest allowed size (untried sizes are optimistic), so auto and
    // SBD at k = 8 start with the same tokens
    let sbd = run(&m, Mode::Sbd, 5.0);
    assert_eq!(auto.tokens[..8], sbd.tokens[..8]);
}

#[test]
fn a_measured_curve_is_positive_and_kept_with_the_model() {
    let m = common::model();
    let c = m.cost_curve().unwrap();
    assert!(c.ntp > 0.0);
    assert_eq!(
        c.blocks.iter().map(|b| b.0).collect::<Vec<_>>(),
        vec![2, 4, 8, 16]
    );
    assert_eq!(m.cost_curve().unwrap(), c, "measured once");
    let again = m.set_cost_curve(c.clone()).unwrap_err().to_string();
    assert!(again.contains("set_cost_curve"), "{again}");
    let bad = CostCurve { ntp: 0.0, ..c };
    let fresh = Model::load(common::fixture(), &LoadOptions::default()).unwrap();
    assert!(fresh.set_cost_curve(bad).is_err());
}

#[test]
fn a_session_keeps_what_auto_learned_so_its_next_generation_does_not_try_blocks_again() {
    // blocks pay only if they reveal several tokens per forward: an untried size is optimistic
    // and gets tried; at gamma 0 it reveals one slot per forward and loses to NTP
    let m = model_with(CostCurve {
        past: 0,
        ntp: 1.0,
        blocks: [2, 4, 8].iter().map(|&k| (k, 3.0, 2.0)).collect(),
    });
    m.set_cost_learning(false); // decide from the curve as set, not from the fixture's real times
    let mut s = Session::new(m.clone()).unwrap();
    let prompt = &common::golden()[0].prompt;
    let first = s.generate(prompt, &opts(Mode::Auto, 0.0), |_| {}).unwrap();
    assert!(first.stats.sbd_blocks > 0, "a fresh session tries a block");
    s.reset();
    let second = s.generate(prompt, &opts(Mode::Auto, 0.0), |_| {}).unwrap();
    assert_eq!(
        second.stats.sbd_blocks, 0,
        "24 tokens, fewer than a retry needs"
    );
    assert_eq!(second.stats.forward_passes, second.tokens.len());
    // the same rule verified is remembered apart (its blocks keep other counts): optimistic
    s.reset();
    let verified = GenerateOptions {
        verify: true,
        ..opts(Mode::Auto, 0.0)
    };
    assert!(
        s.generate(prompt, &verified, |_| {})
            .unwrap()
            .stats
            .sbd_blocks
            > 0
    );
    // another rule has no memory yet; a new session starts optimistic again
    let other = s.generate(prompt, &opts(Mode::Auto, 1e-9), |_| {}).unwrap();
    assert!(other.stats.sbd_blocks > 0);
    assert!(run(&m, Mode::Auto, 0.0).stats.sbd_blocks > 0);
}
