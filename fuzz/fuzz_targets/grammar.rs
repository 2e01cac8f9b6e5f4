//! Structured-output constraints are user input: compile arbitrary JSON schemas, regexes and
//! Lark grammars against the demo model's vocabulary and walk arbitrary token sequences through
//! them. An error or an answer, never a panic or a hang.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use setblock::grammar::satisfies;
use setblock::{Constraint, LoadOptions, Model};

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    text: String,
    tokens: Vec<u16>,
}

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
        let opts = LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        };
        Arc::new(Model::load(dir, &opts).unwrap())
    })
    .clone()
}

fuzz_target!(|input: Input| {
    let c = match input.kind % 3 {
        0 => Constraint::JsonSchema(input.text),
        1 => Constraint::Regex(input.text),
        _ => Constraint::Lark(input.text),
    };
    let tokens: Vec<u32> = input
        .tokens
        .iter()
        .take(64)
        .map(|&t| u32::from(t) % 460)
        .collect();
    let _ = satisfies(&model(), &c, &tokens);
});
