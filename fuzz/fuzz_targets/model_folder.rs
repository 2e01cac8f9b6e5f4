//! Loading a model folder whose manifest has one field replaced by an arbitrary JSON value and
//! whose tokenizer.json / tokenizer_config.json may be replaced by arbitrary bytes, beside the
//! tiny fixture's real graph: an error or a model, never a panic or an abort. A model that loads
//! must answer a one-token generation (or refuse it with an error).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use setblock::{GenerateOptions, LoadOptions, Model, Session};

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Big(u64),
    Float(f64),
    Str(String),
    List(Vec<u32>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which manifest field (by index in the fixture's manifest, nested objects flattened).
    field: u8,
    value: Json,
    tokenizer: Option<Vec<u8>>,
    tokenizer_config: Option<Vec<u8>>,
    max_context: Option<u16>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

fn paths(v: &Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            let mut p = prefix.clone();
            p.push(k.clone());
            out.push(p.clone());
            paths(child, p, out);
        }
    }
}

fn manifest() -> &'static (Value, Vec<Vec<String>>) {
    static M: OnceLock<(Value, Vec<Vec<String>>)> = OnceLock::new();
    M.get_or_init(|| {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("setblock.json")).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        paths(&v, Vec::new(), &mut out);
        (v, out)
    })
}

fn link(name: &str, dir: &Path) {
    std::os::unix::fs::symlink(fixture().join(name), dir.join(name)).unwrap();
}

fuzz_target!(|input: Input| {
    let (base, fields) = manifest();
    let mut m = base.clone();
    let path = &fields[input.field as usize % fields.len()];
    let mut slot = &mut m;
    for k in path {
        slot = slot.get_mut(k).unwrap();
    }
    *slot = match input.value {
        Json::Null => Value::Null,
        Json::Bool(b) => b.into(),
        Json::Int(i) => i.into(),
        Json::Big(u) => u.into(),
        Json::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Json::Str(s) => s.into(),
        Json::List(l) => l.into(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("setblock.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    link("model.onnx", dir);
    link("model.onnx.data", dir);
    match &input.tokenizer {
        Some(bytes) => std::fs::write(dir.join("tokenizer.json"), bytes).unwrap(),
        None => link("tokenizer.json", dir),
    }
    match &input.tokenizer_config {
        Some(bytes) => std::fs::write(dir.join("tokenizer_config.json"), bytes).unwrap(),
        None => link("tokenizer_config.json", dir),
    }
    let opts = LoadOptions {
        threads: Some(1),
        max_context: input.max_context.map(usize::from),
        ..LoadOptions::default()
    };
    if let Ok(model) = Model::load(dir, &opts) {
        let mut s = Session::new(Arc::new(model)).unwrap();
        let g = GenerateOptions {
            max_new_tokens: 1,
            ..GenerateOptions::default()
        };
        let _ = s.generate("hello", &g, |_| {});
    }
});
