//! Shared helpers of the integration tests: the tiny-llama fixture, loaded once per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use setblock::{LoadOptions, Model};

/// `tests/fixtures/tiny-llama` (made by tests/fixtures/make_tiny_llama.sh).
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

/// The fixture model with one intra-op thread (as the reference decoder ran it).
pub fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let opts = LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        };
        Arc::new(
            Model::load(fixture(), &opts)
                .expect("load tests/fixtures/tiny-llama (run scripts/setup.sh first)"),
        )
    })
    .clone()
}

/// Another fixture folder beside tiny-llama (`tiny-llama-fused`, ...) with one intra-op thread.
pub fn model_at(name: &str) -> Arc<Model> {
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let dir = fixture().with_file_name(name);
    Arc::new(Model::load(&dir, &opts).unwrap_or_else(|e| panic!("load {}: {e}", dir.display())))
}

/// After `opts` (an SBD generation) on `prompt`, the session's cache equals the cache of a fresh
/// session that prefilled the committed tokens causally: block slots leave nothing behind.
/// Returns (tokens generated, positions committed, tokens in the context).
pub fn assert_cache_after_sbd_equals_a_causal_prefill(
    model: Arc<Model>,
    prompt: &[u32],
    opts: &setblock::GenerateOptions,
) -> (usize, usize, usize) {
    let mut s = setblock::Session::new(model.clone()).unwrap();
    let generated = s
        .generate_tokens(prompt, opts, &mut |_| {})
        .unwrap()
        .tokens
        .len();
    let committed = s.cache().len();
    let mut fresh = setblock::Session::new(model).unwrap();
    let one = setblock::GenerateOptions {
        mode: setblock::Mode::Ntp,
        max_new_tokens: 1,
        ..setblock::GenerateOptions::default()
    };
    fresh
        .generate_tokens(&s.context_tokens()[..committed], &one, &mut |_| {})
        .unwrap();
    assert_eq!(fresh.cache().len(), committed);
    let worst = s.cache().max_abs_diff(fresh.cache());
    assert!(worst < 1e-4, "max abs diff {worst}");
    (generated, committed, s.context_tokens().len())
}

/// One case of golden.json.
#[derive(serde::Deserialize, Debug)]
pub struct Case {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub mode: String,
    pub block_size: usize,
    pub gamma: f64,
    pub tokens: Vec<u32>,
    pub forwards: usize,
}

#[derive(serde::Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

/// The reference decoder's results for the fixture.
pub fn golden() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture().join("golden.json")).expect("golden.json");
    serde_json::from_str::<Golden>(&text)
        .expect("golden.json parses")
        .cases
}
