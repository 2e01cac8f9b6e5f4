//! `setblock bench-forward --against`: two model folders timed forward for forward.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The CLI binary, under the cargo target runner when the suite runs cross-built under
/// qemu-user (scripts/aarch64.sh exports it; this process inherits it).
fn setblock() -> Command {
    let exe = env!("CARGO_BIN_EXE_setblock");
    let runner = cfg!(all(target_arch = "aarch64", target_os = "linux"))
        .then(|| std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER").ok())
        .flatten();
    match runner {
        Some(r) => {
            let mut words = r.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or("qemu-aarch64"));
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

fn bench_forward(against: &str) -> std::process::Output {
    setblock()
        .current_dir(root())
        .args([
            "bench-forward",
            "--model",
            "tests/fixtures/tiny-llama",
            "--against",
            against,
            "--tokens",
            "1,4",
            "--past",
            "0,5",
            "--reps",
            "3",
            "--threads",
            "1",
            "--json",
        ])
        .output()
        .expect("run the setblock binary")
}

#[test]
fn against_reports_both_medians_and_their_ratio_per_point() {
    let out = bench_forward("tests/fixtures/tiny-llama");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["reps"], 3);
    let points = v["points"].as_array().expect("points");
    let shapes: Vec<(u64, u64)> = points
        .iter()
        .map(|p| (p["past"].as_u64().unwrap(), p["tokens"].as_u64().unwrap()))
        .collect();
    assert_eq!(shapes, [(0, 1), (0, 4), (5, 1), (5, 4)]);
    for p in points {
        for key in ["a_ms", "b_ms", "b_over_a"] {
            let x = p[key].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x > 0.0, "{key} = {x} in {p}");
        }
    }
}

#[test]
fn against_a_different_model_is_refused_with_the_reason() {
    // the demo has 4 layers, the fixture 2: not two exports of one model
    let out = bench_forward("models/demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4 layers") && err.contains("compare two exports of one model"),
        "{err}"
    );
}

#[test]
fn zero_reps_or_a_zero_width_forward_is_refused_naming_the_option() {
    for (flag, value) in [("--reps", "0"), ("--tokens", "1,0")] {
        let out = setblock()
            .current_dir(root())
            .args([
                "bench-forward",
                "--model",
                "tests/fixtures/tiny-llama",
                flag,
                value,
            ])
            .output()
            .expect("run the setblock binary");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(
            err.contains(flag) && err.contains("at least 1"),
            "{flag}: {err}"
        );
    }
}
