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
