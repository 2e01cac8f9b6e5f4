//! Verified SBD (`GenerateOptions::verify`): with greedy values its output is the model's NTP
//! greedy output, whatever SBD drafts. The tiny-llama fixture (random weights, never trained on
//! SBD) drafts badly, so the cut-and-correct path runs on nearly every block.

mod common;

use setblock::{
    Constraint, Event, GenerateOptions, Mode, Sampling, Selection, Session, StopReason,
};

fn ntp(s: &mut Session, prompt: &[u32], max_new: usize) -> setblock::Output {
    s.reset();
    let opts = GenerateOptions {
        mode: Mode::Ntp,
        max_new_tokens: max_new,
        ..GenerateOptions::default()
    };
    s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap()
}

#[test]
fn verified_sbd_and_auto_give_the_ntp_greedy_output() {
    let model = common::model();
    let mut s = Session::new(model.clone()).unwrap();
    let max_k = model.manifest.block_sizes.max.min(8);
    let mut checked = 0;
    for case in common::golden().iter().take(4) {
        for max_new in [1, 2, 7, 24] {
            let want = ntp(&mut s, &case.prompt_ids, max_new);
            for mode in [Mode::Sbd, Mode::Auto] {
                for k in [2, max_k] {
                    for gamma in [0.0, 0.5, 1e9] {
                        s.reset();
                        let opts = GenerateOptions {
                            mode,
                            block_size: Some(k),
                            selection: Some(Selection::EbEntropy { gamma }),
                            max_new_tokens: max_new,
                            verify: true,
                            ..GenerateOptions::default()
                        };
                        let mut streamed = Vec::new();
                        let mut forwards = 0;
                        let got = s
                            .generate_tokens(&case.prompt_ids, &opts, &mut |e| {
                                if let Event::Block {
                                    tokens,
                                    forwards: f,
                                    ..
                                } = e
                                {
                                    streamed.extend_from_slice(tokens);
                                    forwards += f;
                                }
                            })
                            .unwrap();
                        let what = format!("{mode:?} k={k} gamma={gamma} max_new={max_new}");
                        assert_eq!(got.tokens, want.tokens, "{what}");
                        assert_eq!(got.text, want.text, "{what}");
                        assert_eq!(got.stats.stop_reason, want.stats.stop_reason, "{what}");
                        // only checked tokens are streamed, each once
                        assert_eq!(streamed, got.tokens, "{what}");
                        // a whole block per forward: each forward yields a token (its first
                        // slot, or the correction), but a last one that only checks
                        assert!(
                            gamma < 1e9 || got.stats.forward_passes <= got.tokens.len() + 1,
                            "{what}: {} forwards for {} tokens",
                            got.stats.forward_passes,
                            got.tokens.len()
                        );
                        assert!(forwards <= got.stats.forward_passes, "{what}");
                        // the session holds the prompt and the output, nothing drafted
                        let mut context = case.prompt_ids.clone();
                        context.extend_from_slice(&got.tokens);
                        assert_eq!(s.context_tokens(), &context[..], "{what}");
                        assert!(s.cache().len() <= context.len(), "{what}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 4 * 2 * 2 * 3);
}

#[test]
fn a_conversation_goes_on_after_a_verified_turn() {
    let model = common::model();
    let prompt = &common::golden()[0].prompt_ids;
    let turn = |verify: bool| {
        let mut s = Session::new(model.clone()).unwrap();
        let mut opts = GenerateOptions {
            block_size: Some(4),
            max_new_tokens: 9,
            verify,
            ..GenerateOptions::default()
        };
        if !verify {
            opts.mode = Mode::Ntp;
        }
        let a = s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap();
        let b = s.generate_tokens(&[5, 6, 7], &opts, &mut |_| {}).unwrap();
        (a.tokens, b.tokens)
    };
    assert_eq!(turn(true), turn(false));
}

#[test]
fn a_cancelled_verified_run_keeps_no_draft() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[1].prompt_ids;
    let handle = s.cancel_handle();
    let opts = GenerateOptions {
        block_size: Some(4),
        selection: Some(Selection::EbEntropy { gamma: 1e9 }),
        max_new_tokens: 40,
        verify: true,
        ..GenerateOptions::default()
    };
    let out = s
        .generate_tokens(prompt, &opts, &mut |e| {
            if matches!(e, Event::Block { tokens, .. } if !tokens.is_empty()) {
                handle.cancel();
            }
        })
        .unwrap();
    assert_eq!(out.stats.stop_reason, StopReason::Cancelled);
    assert!(!out.tokens.is_empty() && out.tokens.len() < 40);
    let mut context = prompt.clone();
    context.extend_from_slice(&out.tokens);
    assert_eq!(s.context_tokens(), &context[..]);
    assert!(s.cache().len() <= context.len());
}

/// Under a constraint (greedy), verified SBD gives NTP + grammar decoding's output: the grammar
/// rolls back with each cut draft.
#[test]
fn verified_sbd_under_a_constraint_gives_the_ntp_constrained_output() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[1].prompt_ids;
    let mut checked = 0;
    for rx in [
        "a=[0-9]{1,2}; b=[0-9]",
        "[a-z ]{3,12}\\.",
        "(yes|no|maybe), [0-9]{2,6}",
    ] {
        let c = Some(Constraint::Regex(rx.into()));
        s.reset();
        let ntp_opts = GenerateOptions {
            mode: Mode::Ntp,
            max_new_tokens: 30,
            constraint: c.clone(),
            ..GenerateOptions::default()
        };
        let want = s.generate_tokens(prompt, &ntp_opts, &mut |_| {}).unwrap();
        for mode in [Mode::Sbd, Mode::Auto] {
            for k in [2, 4, 8] {
                for gamma in [0.0, 0.5, 1e9] {
                    s.reset();
                    let opts = GenerateOptions {
                        mode,
                        block_size: Some(k),
                        selection: Some(Selection::EbEntropy { gamma }),
                        verify: true,
                        ..ntp_opts.clone()
                    };
                    let got = s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap();
                    let what = format!("{rx} {mode:?} k={k} gamma={gamma}");
                    assert_eq!(got.tokens, want.tokens, "{what}");
                    assert_eq!(got.stats.stop_reason, want.stats.stop_reason, "{what}");
                    let mut context = prompt.clone();
                    context.extend_from_slice(&got.tokens);
                    assert_eq!(s.context_tokens(), &context[..], "{what}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 2 * 3 * 3);
}

/// Sampled values through the speculative-sampling check: with top-k 1 every distribution is
/// one token, so the output must be the greedy NTP output.
#[test]
fn sampled_verification_with_one_candidate_is_greedy() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    for case in common::golden().iter().take(3) {
        let want = ntp(&mut s, &case.prompt_ids, 20);
        for mode in [Mode::Sbd, Mode::Auto] {
            s.reset();
            let opts = GenerateOptions {
                mode,
                block_size: Some(4),
                selection: Some(Selection::EbEntropy { gamma: 1e9 }),
                max_new_tokens: 20,
                verify: true,
                sampling: Sampling {
                    temperature: 0.8,
                    top_k: 1,
                    seed: 3,
                    ..Sampling::default()
                },
                ..GenerateOptions::default()
            };
            let got = s
                .generate_tokens(&case.prompt_ids, &opts, &mut |_| {})
                .unwrap();
            assert_eq!(got.tokens, want.tokens, "{mode:?}");
        }
    }
}

/// The second token of a sampled verified run (a drafted slot, checked) is distributed as NTP
/// sampling's second token; unverified SBD's is not (the fixture's masked-slot distribution is
/// another one).
#[test]
fn sampled_verification_keeps_the_ntp_distribution() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[0].prompt_ids;
    let runs = 3000;
    let histogram = |s: &mut Session, mode: Mode, verify: bool| {
        let mut h = std::collections::HashMap::<u32, f64>::new();
        for seed in 0..runs {
            s.reset();
            let opts = GenerateOptions {
                mode,
                block_size: Some(4),
                selection: Some(Selection::EbEntropy { gamma: 1e9 }),
                max_new_tokens: 2,
                verify,
                sampling: Sampling {
                    temperature: 0.7,
                    top_k: 6,
                    seed,
                    ..Sampling::default()
                },
                ..GenerateOptions::default()
            };
            let out = s.generate_tokens(prompt, &opts, &mut |_| {}).unwrap();
            *h.entry(out.tokens[1]).or_default() += 1.0 / runs as f64;
        }
        h
    };
    let tv = |a: &std::collections::HashMap<u32, f64>, b: &std::collections::HashMap<u32, f64>| {
        let keys: std::collections::HashSet<_> = a.keys().chain(b.keys()).collect();
        keys.iter()
            .map(|k| (a.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0)).abs())
            .sum::<f64>()
            / 2.0
    };
    let ntp = histogram(&mut s, Mode::Ntp, false);
    let verified = histogram(&mut s, Mode::Sbd, true);
    let plain = histogram(&mut s, Mode::Sbd, false);
    let (d_verified, d_plain) = (tv(&verified, &ntp), tv(&plain, &ntp));
    assert!(
        d_verified < 0.05 && d_plain > 3.0 * d_verified,
        "total variation from NTP sampling: verified {d_verified:.3}, unverified {d_plain:.3}"
    );
}

/// Without a selection, verified SBD reveals a whole block a forward (VERIFIED_GAMMA).
#[test]
fn verified_sbd_defaults_to_a_whole_block_a_forward() {
    let model = common::model();
    let mut s = Session::new(model).unwrap();
    let prompt = &common::golden()[2].prompt_ids;
    let run = |s: &mut Session, selection: Option<Selection>| {
        s.reset();
        let opts = GenerateOptions {
            block_size: Some(4),
            selection,
            max_new_tokens: 24,
            verify: true,
            ..GenerateOptions::default()
        };
        let mut per_block = Vec::new();
        let out = s
            .generate_tokens(prompt, &opts, &mut |e| {
                if let Event::Block { forwards, .. } = e {
                    per_block.push(*forwards);
                }
            })
            .unwrap();
        (out.tokens, out.stats.forward_passes, per_block)
    };
    let default = run(&mut s, None);
    let infinite = run(
        &mut s,
        Some(Selection::EbEntropy {
            gamma: setblock::VERIFIED_GAMMA,
        }),
    );
    let low = run(&mut s, Some(Selection::EbEntropy { gamma: 0.0 }));
    assert_eq!(default, infinite);
    assert_eq!(default.0, low.0);
    assert_ne!(default.1, low.1, "gamma 0 reveals one slot a forward");
    // every forward checks a block and yields at least one token: no event spans two forwards
    assert!(default.2.iter().all(|&f| f <= 1), "{:?}", default.2);
}
