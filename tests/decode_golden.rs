//! The runtime against the Python reference decoder (tests/fixtures/tiny-llama/golden.json):
//! NTP, SBD and verified SBD tokens and forward counts, for several block sizes and gammas.

mod common;

use setblock::{GenerateOptions, Mode, Selection, Session};

fn options(c: &common::Case) -> GenerateOptions {
    GenerateOptions {
        mode: if c.mode == "ntp" {
            Mode::Ntp
        } else {
            Mode::Sbd
        },
        block_size: Some(c.block_size),
        selection: Some(Selection::EbEntropy { gamma: c.gamma }),
        max_new_tokens: c.max_new_tokens,
        verify: c.mode == "sbd_verified",
        ..GenerateOptions::default()
    }
}

#[test]
fn tokenizer_matches_the_reference_encoding() {
    let model = common::model();
    for c in common::golden() {
        let ids = model.tokenizer.encode(c.prompt.as_str(), false).unwrap();
        assert_eq!(ids.get_ids(), &c.prompt_ids[..], "prompt {:?}", c.prompt);
    }
}

#[test]
fn every_golden_case_matches_tokens_and_forwards() {
    golden_cases_match(common::model());
}

/// A folder exported before `logits_index` (every row's logits computed) decodes identically.
#[test]
fn graphs_without_logits_index_decode_the_same() {
    let model = common::model_at("tiny-llama-full-logits");
    assert!(model.manifest.io.logits_index.is_none());
    assert!(common::model().manifest.io.logits_index.is_some());
    golden_cases_match(model);
}

/// A folder whose attention is fused (`export --fused-attention`, kv_layout `head-major-shared`:
/// the graph writes the cache in place) decodes identically: same tokens, same forwards, in
/// NTP, SBD and verified SBD.
#[test]
fn graphs_with_fused_attention_decode_the_same() {
    let model = common::model_at("tiny-llama-fused");
    assert_eq!(model.manifest.kv_layout, "head-major-shared");
    golden_cases_match(model);
}

fn golden_cases_match(model: std::sync::Arc<setblock::Model>) {
    let mut session = Session::new(model).unwrap();
    let cases = common::golden();
    assert!(cases.len() >= 80, "golden.json holds {} cases", cases.len());
    let mut sbd_distinct_forwards = std::collections::BTreeSet::new();
    for c in &cases {
        session.reset();
        let out = session
            .generate_tokens(&c.prompt_ids, &options(c), &mut |_| {})
            .unwrap();
        let what = format!(
            "{:?} mode {} k {} gamma {}",
            c.prompt, c.mode, c.block_size, c.gamma
        );
        assert_eq!(out.tokens, c.tokens, "tokens differ: {what}");
        assert_eq!(
            out.stats.forward_passes, c.forwards,
            "forward count differs: {what}"
        );
        if c.mode == "sbd" {
            sbd_distinct_forwards.insert(c.forwards);
        }
    }
    // the gammas in the fixture really exercise different reveal counts
    assert!(
        sbd_distinct_forwards.len() >= 5,
        "{sbd_distinct_forwards:?}"
    );
}

#[test]
fn sbd_with_block_size_one_is_ntp() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[0].prompt_ids;
    let mut opts = GenerateOptions {
        max_new_tokens: 20,
        block_size: Some(1),
        ..GenerateOptions::default()
    };
    let sbd = s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap();
    s.reset();
    opts.mode = Mode::Ntp;
    let ntp = s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap();
    assert_eq!(sbd.tokens, ntp.tokens);
    assert_eq!(sbd.stats.forward_passes, ntp.stats.forward_passes);
}

#[test]
fn gamma_zero_reveals_one_slot_and_a_huge_gamma_fills_a_block_per_forward() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[0].prompt_ids;
    let run = |s: &mut Session, gamma: f64| {
        s.reset();
        let opts = GenerateOptions {
            block_size: Some(8),
            selection: Some(Selection::EbEntropy { gamma }),
            max_new_tokens: 24,
            ..GenerateOptions::default()
        };
        let mut per_block = Vec::new();
        let out = s
            .generate_tokens(prompt, &opts, &mut |e| {
                if let setblock::Event::Block {
                    tokens, forwards, ..
                } = e
                {
                    if !tokens.is_empty() {
                        per_block.push((tokens.len(), *forwards));
                    }
                }
            })
            .unwrap();
        (out, per_block)
    };
    let (out, blocks) = run(&mut s, 0.0);
    assert_eq!(out.stats.forward_passes, out.tokens.len());
    assert!(blocks.iter().all(|(n, f)| n == f), "{blocks:?}");
    let (out, blocks) = run(&mut s, 1e9);
    assert_eq!(out.stats.forward_passes, 3);
    assert!(blocks.iter().all(|&(n, f)| n == 8 && f == 1), "{blocks:?}");
}
