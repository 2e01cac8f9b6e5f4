//! The incremental detokenizer with arbitrary token ids (in and out of the vocabulary), split
//! into arbitrary pushes, with arbitrary stop strings, on the demo's and the fixture's
//! tokenizers. Never a panic; the streamed text never splits a character (it is a String); what
//! is streamed before a stop never contains the stop.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use setblock::stream::Detokenizer;
use tokenizers::Tokenizer;

#[derive(Arbitrary, Debug)]
struct Input {
    which: bool,
    pushes: Vec<Vec<u16>>,
    stops: Vec<String>,
}

fn tokenizers() -> &'static [Tokenizer; 2] {
    static T: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let load = |p: &str| Tokenizer::from_file(root.join(p)).unwrap();
        [
            load("models/demo/tokenizer.json"),
            load("tests/fixtures/tiny-llama/tokenizer.json"),
        ]
    })
}

fuzz_target!(|input: Input| {
    let tok = &tokenizers()[usize::from(input.which)];
    let stops: Vec<String> = input.stops.into_iter().take(4).collect();
    let mut d = Detokenizer::new(stops.clone());
    let mut streamed = String::new();
    for ids in input.pushes.iter().take(64) {
        // ids up to 65535: the demo's vocabulary is 456 tokens, so most are outside it
        let ids: Vec<u32> = ids.iter().map(|&i| u32::from(i)).collect();
        let (text, stopped) = d.push(tok, &ids);
        streamed.push_str(&text);
        if stopped {
            break;
        }
    }
    streamed.push_str(&d.finish());
    for s in stops.iter().filter(|s| !s.is_empty()) {
        assert!(
            !streamed.contains(s.as_str()),
            "{streamed:?} holds the stop {s:?}"
        );
    }
});
