//! A `head-major-shared` folder (`export --fused-attention`: the graph writes the KV cache in
//! place) behaves as the standard folder of the same weights wherever the cache is reused, rolled
//! back or shared: multi-turn chat, replayed conversations, the cache after SBD blocks, and
//! several sessions' caches taking turns on one model (each forward on another cache binds it
//! anew). The golden cases are in decode_golden.rs.

mod common;

use std::sync::Arc;

use setblock::{GenerateOptions, Mode, Model, Selection, Session};

fn fused() -> Arc<Model> {
    let model = common::model_at("tiny-llama-fused");
    assert!(model.manifest.kv_in_place());
    assert_eq!(model.info().kv_layout, "head-major-shared");
    model
}

fn sbd(k: usize, gamma: f64, max_new: usize) -> GenerateOptions {
    GenerateOptions {
        mode: Mode::Sbd,
        block_size: Some(k),
        selection: Some(Selection::EbEntropy { gamma }),
        max_new_tokens: max_new,
        ..GenerateOptions::default()
    }
}

/// Three turns, then the conversation replayed from other messages on the same session.
fn conversation(model: Arc<Model>) -> Vec<Vec<u32>> {
    let mut s = Session::new(model).unwrap();
    let mut out = Vec::new();
    for (q, opts) in [
        ("sort 3 1 2", sbd(4, 0.5, 12)),
        ("sort 9 8", sbd(8, 0.0, 10)),
        (
            "sort 7 7 1",
            GenerateOptions {
                max_new_tokens: 10,
                ..GenerateOptions::default()
            },
        ),
    ] {
        out.push(s.generate(q, &opts, |_| {}).unwrap().tokens);
    }
    s.set_messages(vec![setblock::Message {
        role: "user".into(),
        content: "sort 5 4".into(),
    }]);
    out.push(
        s.generate("sort 9 8", &sbd(4, 0.5, 12), |_| {})
            .unwrap()
            .tokens,
    );
    let verified = GenerateOptions {
        verify: true,
        ..sbd(8, 1.0, 16)
    };
    out.push(s.generate("sort 2 6", &verified, |_| {}).unwrap().tokens);
    out
}

#[test]
fn multi_turn_and_replayed_conversations_equal_the_standard_folders() {
    let fused = conversation(fused());
    assert_eq!(fused, conversation(common::model()));
    assert!(fused.iter().all(|t| !t.is_empty()));
}

#[test]
fn the_cache_after_sbd_blocks_equals_a_fresh_causal_prefill() {
    let model = fused();
    let prompt: Vec<u32> = model
        .tokenizer
        .encode("sort 4 2 9 1", false)
        .unwrap()
        .get_ids()
        .to_vec();
    // the block slots' K/V written past the committed positions were overwritten, never kept
    let (_, committed, _) =
        common::assert_cache_after_sbd_equals_a_causal_prefill(model, &prompt, &sbd(8, 0.5, 40));
    assert!(committed > prompt.len());
}

#[test]
fn sessions_taking_turns_on_one_model_decode_as_alone() {
    let model = fused();
    let prompts = ["sort 3 1 2", "sort 8 8 0 4", "sort 6 5"];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            Session::new(model.clone())
                .unwrap()
                .generate(p, &sbd(4, 0.3, 24), |_| {})
                .unwrap()
                .tokens
        })
        .collect();
    // three sessions stepped forward by forward in turn: every forward binds another cache
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (m, p) = (model.clone(), p.to_string());
            std::thread::spawn(move || {
                let mut s = Session::new(m).unwrap();
                (0..5)
                    .map(|_| {
                        s.reset();
                        s.generate(&p, &sbd(4, 0.3, 24), |_| {}).unwrap().tokens
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, want) in threads.into_iter().zip(&alone) {
        for got in t.join().unwrap() {
            assert_eq!(&got, want);
        }
    }
}
