//! Every way a model folder can be wrong gets an error that names the problem.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use setblock::{Error, ExecutionProvider, LoadOptions, Model};

fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    copy_folder(&common::fixture())
}

fn copy_folder(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("setblock.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    match Model::load(dir, &opts) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_loads() {
    let m = common::model();
    let info = m.info();
    assert_eq!(info.layers, 2);
    assert_eq!(info.max_context, 128);
    assert_eq!(info.kv_cache_bytes, 128 * 2 * 2 * 2 * 16 * 4);
    assert_eq!(info.execution_providers, ["cpu"]);
}

#[test]
fn missing_folder_and_files() {
    assert!(load_err(Path::new("/nonexistent/model")).contains("model folder"));
    let (_t, dir) = copy_fixture();
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.onnx") && e.contains("ONNX graph"), "{e}");
    let (_t, dir) = copy_fixture();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(load_err(&dir).contains("tokenizer"));
    let (_t, dir) = copy_fixture();
    std::fs::remove_file(dir.join("setblock.json")).unwrap();
    assert!(load_err(&dir).contains("setblock.json"));
    // the graph's tensors live in files.weights beside it
    let (_t, dir) = copy_fixture();
    std::fs::remove_file(dir.join("model.onnx.data")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.onnx.data") && e.contains("external weights"),
        "{e}"
    );
}

#[test]
fn broken_manifests() {
    let (_t, dir) = copy_fixture();
    std::fs::write(dir.join("setblock.json"), "{ not json").unwrap();
    assert!(load_err(&dir).contains("not valid JSON"));

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "version",
            Box::new(|v| v["format_version"] = 99.into()),
            "format_version 99 is not supported",
        ),
        (
            "mask",
            Box::new(|v| v["mask_token_id"] = 455.into()),
            "mask_token_id 455 is outside the vocabulary",
        ),
        (
            "eos",
            Box::new(|v| v["eos_token_ids"] = serde_json::json!([])),
            "eos_token_ids is empty",
        ),
        (
            "field",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("num_layers");
            }),
            "num_layers",
        ),
        (
            "layout",
            Box::new(|v| v["kv_layout"] = "head-major".into()),
            "sequence-major",
        ),
        (
            "blocks",
            Box::new(|v| v["block_sizes"] = serde_json::json!({"min": 4, "max": 2})),
            "block_sizes",
        ),
        (
            "vocab",
            Box::new(|v| v["vocab_size"] = 300.into()),
            "different models",
        ),
        (
            "layers",
            Box::new(|v| v["num_layers"] = 3.into()),
            "past_key_values.2.key",
        ),
        (
            "heads",
            Box::new(|v| v["num_kv_heads"] = 4.into()),
            "kv heads",
        ),
        (
            // the fixture's graph takes packed [batch, seq, kv_heads * head_dim] K/V
            "rank",
            Box::new(|v| v["kv_layout"] = "sequence-major".into()),
            "kv_layout \"sequence-major\"",
        ),
        (
            // a standard graph's K/V are [batch, seq, ...]; the in-place layout wants head-major
            "in-place",
            Box::new(|v| v["kv_layout"] = "head-major-shared".into()),
            "wants [batch, kv_heads, capacity, head_dim]",
        ),
        (
            "names",
            Box::new(|v| v["io"]["logits"] = "scores".into()),
            "\"scores\"",
        ),
        // numbers that would size allocations: refused before anything is allocated
        (
            "layers 1e11",
            Box::new(|v| v["num_layers"] = 100_000_000_000u64.into()),
            "num_layers 100000000000 is beyond what this runtime accepts",
        ),
        (
            "layers 1e18",
            Box::new(|v| v["num_layers"] = 1_000_000_000_000_000_000u64.into()),
            "num_layers 1000000000000000000 is beyond",
        ),
        (
            "layers beyond the graph",
            Box::new(|v| v["num_layers"] = 1000.into()),
            "num_layers 1000 needs 2000 past inputs but the graph has 8 inputs",
        ),
        (
            "positions 1e15",
            Box::new(|v| v["max_positions"] = 1_000_000_000_000_000u64.into()),
            "max_positions 1000000000000000 is beyond",
        ),
        (
            "positions beyond the graph's rotary table",
            Box::new(|v| v["max_positions"] = 100_000.into()),
            "a forward at position 2047 (max_context - 1) fails",
        ),
        // type errors name the field
        (
            "string layers",
            Box::new(|v| v["num_layers"] = "four".into()),
            "field num_layers: invalid type: string \"four\"",
        ),
        (
            "negative block",
            Box::new(|v| v["block_sizes"]["min"] = (-2).into()),
            "field block_sizes.min: invalid value: integer `-2`",
        ),
        (
            "mask 2^32",
            Box::new(|v| v["mask_token_id"] = (1u64 << 32).into()),
            "field mask_token_id: invalid value: integer `4294967296`",
        ),
        (
            "gamma",
            Box::new(|v| v["gamma"]["low"] = (-1.0).into()),
            "gamma.low -1 must be a finite number >= 0",
        ),
        (
            "outside the folder",
            Box::new(|v| v["files"]["model"] = "../model.onnx".into()),
            "files.model \"../model.onnx\" must name a file inside the model folder",
        ),
        (
            "absolute",
            Box::new(|v| v["files"]["tokenizer"] = "/etc/passwd".into()),
            "files.tokenizer \"/etc/passwd\" must name a file inside",
        ),
    ];
    for (name, edit, needle) in cases {
        let (_t, dir) = copy_fixture();
        edit_manifest(&dir, edit);
        let e = load_err(&dir);
        assert!(e.contains(needle), "{name}: {e}");
    }
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let (_t, dir) = copy_fixture();
    let p = dir.join("setblock.json");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("\u{feff}{text}")).unwrap();
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    Model::load(&dir, &opts).unwrap();
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Files that exist but cannot be used are named with what is wrong with them, never reported
/// missing, never read when they are FIFOs (which would block the load for ever).
#[test]
fn unusable_files_say_what_is_wrong() {
    type Make = fn(&Path);
    let cases: [(&str, &str, Make); 6] = [
        ("setblock.json", "is not a regular file (a FIFO", mkfifo),
        (
            "tokenizer_config.json",
            "is not a regular file (a FIFO",
            mkfifo,
        ),
        ("model.onnx", "is a directory, not a file", |p| {
            std::fs::create_dir(p).unwrap()
        }),
        ("tokenizer_config.json", "is a directory, not a file", |p| {
            std::fs::create_dir(p).unwrap()
        }),
        ("tokenizer.json", "is a symlink loop", |p| {
            std::os::unix::fs::symlink(p, p).unwrap()
        }),
        (
            "model.onnx.data",
            "is a symlink to a file that does not exist",
            |p| std::os::unix::fs::symlink(p.with_file_name("gone"), p).unwrap(),
        ),
    ];
    for (file, needle, make) in cases {
        let (_t, dir) = copy_fixture();
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        make(&path);
        let e = load_err(&dir);
        assert!(e.contains(file) && e.contains(needle), "{file}: {e}");
        assert!(!e.contains("not found"), "{file}: {e}");
    }
}

/// A chat template that does not compile is a fault of the model folder, found at load.
#[test]
fn a_template_that_does_not_compile_is_a_model_error() {
    let (_t, dir) = copy_fixture();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"chat_template": "{% if messages %}never closed"}"#,
    )
    .unwrap();
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let e = Model::load(&dir, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ModelFile {
                what: "chat template",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("does not compile"), "{e}");
}

#[test]
fn bad_options() {
    let opts = LoadOptions {
        max_context: Some(4096),
        ..LoadOptions::default()
    };
    let e = Model::load(common::fixture(), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                option: "max_context",
                ..
            }
        ),
        "{e}"
    );
    let opts = LoadOptions {
        threads: Some(0),
        ..LoadOptions::default()
    };
    assert!(Model::load(common::fixture(), &opts).is_err());
    for threads in [100_000, setblock::model::max_threads() + 1] {
        let opts = LoadOptions {
            threads: Some(threads),
            ..LoadOptions::default()
        };
        let e = Model::load(common::fixture(), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("threads = {threads}")) && e.contains("4 per core"),
            "{e}"
        );
    }
    let e = ExecutionProvider::parse("tpu").unwrap_err().to_string();
    assert!(e.contains("cpu, cuda"), "{e}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_provider_not_compiled_in_names_the_feature() {
    let opts = LoadOptions {
        execution_providers: vec![ExecutionProvider::parse("cuda").unwrap()],
        ..LoadOptions::default()
    };
    let e = Model::load(common::fixture(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--features cuda"), "{e}");
}

#[test]
fn a_missing_named_library_is_an_error_not_a_fallback() {
    let opts = LoadOptions {
        ort_library: Some("/nonexistent/libonnxruntime.so".into()),
        ..LoadOptions::default()
    };
    // the library is already loaded in this process by other tests or not: either way, an error
    let e = Model::load(common::fixture(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/libonnxruntime.so"), "{e}");
}

#[test]
fn quantization_options_are_read_and_shown() {
    let (_tmp, dir) = copy_fixture();
    edit_manifest(&dir, |m| {
        m["quantization_options"] = serde_json::json!({
            "method": "MatMulNBits", "bits": 4, "block_size": 32, "symmetric": true,
            "accuracy_level": 4, "a_later_field": "ignored"
        });
    });
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let info = Model::load(&dir, &opts).unwrap().info();
    let q = info.quantization_options.expect("recorded options");
    assert_eq!(q.accuracy_level, Some(4));
    assert_eq!(
        q.to_string(),
        "MatMulNBits, 4-bit, block 32, symmetric, accuracy level 4"
    );
    edit_manifest(&dir, |m| {
        m["quantization_options"]["accuracy_level"] = "four".into()
    });
    let e = load_err(&dir);
    assert!(e.contains("quantization_options.accuracy_level"), "{e}");
}

/// A fused-attention folder that this ONNX Runtime cannot load (here its graph names an operator
/// domain no runtime has, as an ONNX Runtime without the op would fail) says which export it is
/// and what to use instead.
#[test]
fn a_fused_attention_graph_that_fails_to_load_names_the_export_option() {
    let (_tmp, dir) = copy_folder(&common::fixture().with_file_name("tiny-llama-fused"));
    let path = dir.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    // the same length, so the protobuf stays well formed: every com.microsoft op unresolvable
    let (from, to) = (b"com.microsoft".as_slice(), b"com.microsofx".as_slice());
    let mut hits = 0;
    for i in 0..=bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0);
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("exported with --fused-attention"), "{e}");
    assert!(e.contains("exported without --fused-attention"), "{e}");
}
