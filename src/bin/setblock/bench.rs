//! `setblock bench` (NTP against SBD over a prompt file) and `setblock bench-forward` (the cost of
//! one forward against its width).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use setblock::model::median;
use setblock::{GenerateOptions, Mode, Session};

use crate::{load, options, DecodeArgs, ModelArgs};

/// A count that must be at least 1 (a run of zero repetitions or prompts measures nothing).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// JSONL file: one object per line with "prompt" (or "question") and optionally "answer",
    /// "task" and "grade" ("final": the text after the last `#### ` equals the answer, the
    /// default; "json": the whole output parses as JSON equal to the answer parsed as JSON).
    #[arg(long)]
    prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Gammas to run in SBD mode (default: the model's low and high).
    #[arg(long, value_delimiter = ',')]
    gammas: Vec<f64>,
    /// Timed passes over the prompts (systems interleaved prompt by prompt); accuracy and forward
    /// counts come from the first. A warm-up of up to 5 prompts per system runs before, untimed.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    repeat: usize,
    /// Only the NTP system (for an NTP-trained baseline model).
    #[arg(long)]
    ntp_only: bool,
    /// Run each SBD and auto system verified only (`--verify` runs each both ways).
    #[arg(long)]
    verify_only: bool,
    /// Also run the `auto` block policy at each gamma (correcting its cost curve from the
    /// forward times it observes, as it does by default).
    #[arg(long)]
    auto: bool,
    /// With --auto, also run `auto` deciding from the cost curve as measured, never corrected
    /// (the before of the online correction's before/after).
    #[arg(long, requires = "auto")]
    auto_fixed_curve: bool,
    /// JSON output (one object with a row per system).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct BenchForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens per forward.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 32], value_parser = at_least_one)]
    tokens: Vec<usize>,
    /// Cached positions before the forward.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 128, 384])]
    past: Vec<usize>,
    /// Timed runs per point (median reported).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    reps: usize,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// A second model folder to time against the first, forward for forward (A, B, then B, A
    /// in the next round, so that machine noise hits both alike): per point both medians and
    /// the median of the per-round ratios B / A. For graph rewrites and quantization options
    /// whose difference is smaller than the drift between two separate runs.
    #[arg(long)]
    against: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct BenchRow {
    prompt: Option<String>,
    question: Option<String>,
    answer: Option<String>,
    task: Option<String>,
    #[serde(default)]
    grade: Grade,
}

/// How `setblock bench` decides that an output answers a row correctly.
#[derive(serde::Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Grade {
    /// The text after the last `#### ` (to the end of its line) equals the answer.
    #[default]
    Final,
    /// The whole output parses as JSON and equals the answer parsed as JSON (key order and
    /// spacing aside).
    Json,
}

impl Grade {
    fn correct(self, text: &str, answer: &str) -> bool {
        match self {
            Grade::Final => final_answer(text).as_deref() == Some(answer),
            Grade::Json => match (
                serde_json::from_str::<serde_json::Value>(text.trim()),
                serde_json::from_str::<serde_json::Value>(answer),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

fn final_answer(text: &str) -> Option<String> {
    let (_, tail) = text.rsplit_once("#### ")?;
    Some(tail.lines().next().unwrap_or("").trim().to_string())
}

#[derive(serde::Serialize, Default, Clone)]
struct BenchResult {
    system: String,
    prompts: usize,
    generated_tokens: usize,
    forward_passes: usize,
    tokens_per_forward: f64,
    forward_reduction_vs_ntp: f64,
    decode_tokens_per_s: f64,
    mean_ttft_ms: f64,
    runtime_overhead_pct: f64,
    /// Decode tokens/s that the cost curve predicts for the forwards this system ran (NTP and
    /// fixed-k SBD; none for auto): the runtime's own cost shows as measured < predicted.
    predicted_decode_tokens_per_s: Option<f64>,
    /// The same prediction from the curve as `auto` corrected it during this run (`--auto`):
    /// closer to the measured rate than the first when the correction works.
    learned_curve_decode_tokens_per_s: Option<f64>,
    sbd_blocks: usize,
    /// Prompts whose output tokens equal the NTP system's (first pass): every one for verified
    /// SBD in exact arithmetic (docs/sbd-verified.md).
    same_tokens_as_ntp: usize,
    accuracy: Option<f64>,
    per_task_accuracy: std::collections::BTreeMap<String, f64>,
}

/// Decode tokens/s that `curve` predicts for `tokens` decoded in `shape` = (block size, forwards,
/// blocks; block size 1 for NTP, 0 for what the curve does not price).
fn predicted_rate(
    curve: &setblock::CostCurve,
    shape: (usize, f64, f64),
    tokens: f64,
) -> Option<f64> {
    let (k, forwards, blocks) = shape;
    let secs = (k > 0)
        .then(|| curve.seconds(k, forwards, blocks))
        .flatten()?;
    (secs.is_finite() && secs > 0.0).then(|| tokens / secs)
}

pub(crate) fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let model = load(&a.model)?;
    let text = std::fs::read_to_string(&a.prompts)
        .with_context(|| format!("reading --prompts {}", a.prompts.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let r: BenchRow = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", a.prompts.display(), n + 1))?;
        let prompt = match (r.question, r.prompt) {
            (Some(q), _) => q,
            (None, Some(p)) => p,
            _ => bail!(
                "{}:{}: needs a \"question\" or \"prompt\" field",
                a.prompts.display(),
                n + 1
            ),
        };
        if let (Grade::Json, Some(ans)) = (r.grade, &r.answer) {
            serde_json::from_str::<serde_json::Value>(ans).with_context(|| {
                format!(
                    "{}:{}: \"grade\": \"json\" needs an \"answer\" that is JSON",
                    a.prompts.display(),
                    n + 1
                )
            })?;
        }
        rows.push((
            prompt,
            r.answer,
            r.task.unwrap_or_else(|| "all".into()),
            r.grade,
        ));
    }
    if let Some(l) = a.limit {
        rows.truncate(l);
    }
    if rows.is_empty() {
        bail!("{} holds no prompts", a.prompts.display());
    }
    let gammas = if a.gammas.is_empty() {
        vec![model.manifest.gamma.low, model.manifest.gamma.high]
    } else {
        a.gammas.clone()
    };
    // (name, options, whether `auto` corrects its cost curve)
    let mut systems: Vec<(String, GenerateOptions, bool)> = Vec::new();
    let mut ntp = options(&a.decode, &model, None)?;
    ntp.mode = Mode::Ntp;
    systems.push(("ntp".into(), ntp, true));
    // with --verify, each SBD and auto system runs unverified and verified, side by side
    let checks: &[bool] = match (a.verify_only, a.decode.verify) {
        (true, _) => &[true],
        (false, true) => &[false, true],
        (false, false) => &[false],
    };
    for g in gammas.iter().filter(|_| !a.ntp_only) {
        for &verify in checks {
            let tag = if verify { "+verify" } else { "" };
            let mut o = options(&a.decode, &model, Some(*g))?;
            o.verify = verify;
            o.mode = Mode::Sbd;
            systems.push((format!("sbd{tag} gamma={g}"), o.clone(), true));
            if a.auto {
                o.mode = Mode::Auto;
                systems.push((format!("auto{tag} gamma={g}"), o.clone(), true));
                if a.auto_fixed_curve {
                    systems.push((format!("auto{tag} gamma={g} (measured curve)"), o, false));
                }
            }
        }
    }
    let curve = model.cost_curve()?;
    let shared = model.clone();
    let mut session = Session::new(model)?;
    let block_sizes = systems
        .iter()
        .map(|(_, o, _)| session.resolve(o).map(|r| r.0))
        .collect::<Result<Vec<usize>, _>>()?;
    let passes = a.repeat;
    for (prompt, ..) in rows.iter().take(5) {
        for (_, opts, learn) in &systems {
            shared.set_cost_learning(*learn);
            session.reset();
            session.generate(prompt, opts, |_| {})?;
        }
    }
    let bar = ProgressBar::new((passes * rows.len() * systems.len()) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut acc: Vec<BenchResult> = systems
        .iter()
        .map(|(n, ..)| BenchResult {
            system: n.clone(),
            ..Default::default()
        })
        .collect();
    let mut correct: Vec<std::collections::BTreeMap<String, (usize, usize)>> =
        vec![Default::default(); systems.len()];
    let mut decode_time = vec![0.0f64; systems.len()];
    let mut ttft = vec![0.0f64; systems.len()];
    let mut total_ms = vec![0.0f64; systems.len()];
    let mut ort_ms = vec![0.0f64; systems.len()];
    // per system: (block size, later forwards, later blocks) summed; k = 0 for auto (unpriced)
    let mut decode_shape = vec![(0usize, 0.0f64, 0.0f64); systems.len()];
    // the NTP system (the first) output for the prompt at hand
    let mut ntp_tokens: Vec<u32> = Vec::new();
    for pass in 0..passes {
        for (prompt, answer, task, grade) in &rows {
            // interleave systems prompt by prompt so drift in machine load hits all of them alike
            for (si, (name, opts, learn)) in systems.iter().enumerate() {
                bar.set_message(name.clone());
                shared.set_cost_learning(*learn);
                session.reset();
                let out = session.generate(prompt, opts, |_| {})?;
                bar.inc(1);
                let r = &mut acc[si];
                let st = &out.stats;
                let k = block_sizes[si];
                // decode forwards: all but the first (prefill + first block)
                let later = st.forward_passes.saturating_sub(1) as f64;
                let later_blocks = st.sbd_blocks.saturating_sub(1) as f64;
                // NTP and SBD: seconds are linear in forwards and blocks, so the totals price
                // every generation at once, by the measured curve and by the learned one
                if opts.mode != Mode::Auto {
                    decode_shape[si].0 = if opts.mode == Mode::Ntp { 1 } else { k };
                }
                decode_shape[si].1 += later;
                decode_shape[si].2 += later_blocks;
                if pass == 0 {
                    if si == 0 {
                        ntp_tokens.clone_from(&out.tokens);
                    }
                    r.same_tokens_as_ntp += usize::from(out.tokens == ntp_tokens);
                    r.sbd_blocks += st.sbd_blocks;
                    r.prompts += 1;
                    r.generated_tokens += out.stats.generated_tokens;
                    r.forward_passes += out.stats.forward_passes;
                    if let Some(ans) = answer {
                        let e = correct[si].entry(task.clone()).or_default();
                        e.0 += usize::from(grade.correct(&out.text, ans));
                        e.1 += 1;
                    }
                }
                decode_time[si] += (out.stats.total_ms - out.stats.prefill_ms) / 1e3;
                total_ms[si] += out.stats.total_ms;
                ort_ms[si] += out.stats.onnx_runtime_ms;
                ttft[si] += out.stats.time_to_first_token_ms;
            }
        }
    }
    bar.finish_and_clear();
    let reps = passes as f64;
    let learned = shared.learned_cost_curve();
    let ntp_forwards = acc[0].forward_passes as f64;
    for (si, r) in acc.iter_mut().enumerate() {
        r.tokens_per_forward = r.generated_tokens as f64 / r.forward_passes.max(1) as f64;
        r.forward_reduction_vs_ntp = ntp_forwards / r.forward_passes.max(1) as f64;
        r.decode_tokens_per_s = r.generated_tokens as f64 * reps / decode_time[si].max(1e-9);
        r.mean_ttft_ms = ttft[si] / (reps * r.prompts.max(1) as f64);
        r.runtime_overhead_pct = 100.0 * (total_ms[si] - ort_ms[si]) / total_ms[si].max(1e-9);
        let tokens = r.generated_tokens as f64 * reps;
        r.predicted_decode_tokens_per_s = predicted_rate(&curve, decode_shape[si], tokens);
        r.learned_curve_decode_tokens_per_s = learned
            .as_ref()
            .and_then(|c| predicted_rate(c, decode_shape[si], tokens));
        let (c, t) = correct[si]
            .values()
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if t > 0 {
            r.accuracy = Some(100.0 * c as f64 / t as f64);
            r.per_task_accuracy = correct[si]
                .iter()
                .map(|(k, (c, t))| (k.clone(), 100.0 * *c as f64 / *t as f64))
                .collect();
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&acc)?);
        return Ok(());
    }
    let mut table = markdown_table([
        "system",
        "forwards",
        "tokens/forward",
        "forward reduction",
        "decode tokens/s",
        "cost-curve prediction",
        "learned-curve prediction",
        "TTFT ms",
        "outside ORT %",
        "same tokens as NTP",
        "accuracy %",
    ]);
    for r in &acc {
        table.add_row([
            r.system.clone(),
            r.forward_passes.to_string(),
            format!("{:.2}", r.tokens_per_forward),
            format!("{:.2}x", r.forward_reduction_vs_ntp),
            format!("{:.0}", r.decode_tokens_per_s),
            r.predicted_decode_tokens_per_s
                .map_or("-".into(), |p| format!("{p:.0}")),
            r.learned_curve_decode_tokens_per_s
                .map_or("-".into(), |p| format!("{p:.0}")),
            format!("{:.1}", r.mean_ttft_ms),
            format!("{:.1}", r.runtime_overhead_pct),
            format!("{}/{}", r.same_tokens_as_ntp, r.prompts),
            r.accuracy.map_or("-".into(), |a| format!("{a:.1}")),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// Read bandwidth of this machine in bytes/s: `threads` threads summing disjoint parts of a
/// 512 MiB buffer (far larger than any cache), best of 5.
fn read_bandwidth(threads: usize) -> f64 {
    let data = vec![1.0f32; 128 << 20];
    let part = data.len().div_ceil(threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = data
                .chunks(part)
                .map(|c| {
                    s.spawn(move || {
                        // 8 accumulators so the sum is bound by memory, not by the add latency
                        let mut acc = [0.0f32; 8];
                        for w in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] += w[i];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        let secs = t0.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max((data.len() * 4) as f64 / secs);
    }
    best
}

pub(crate) fn bench_forward(a: BenchForwardArgs) -> anyhow::Result<()> {
    if let Some(b) = &a.against {
        return bench_against(&a, b);
    }
    let model = load(&a.model)?;
    let threads = a
        .model
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bandwidth = read_bandwidth(threads);
    let info = model.info();
    let longest = a.tokens.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    let bar = ProgressBar::new((a.past.len() * a.reps) as u64);
    for &past in &a.past {
        let mut probe = model.probe(past, longest)?;
        // each size with the logits of its last row only, and of all its rows (what a graph
        // without logits_index always computes)
        let shapes: Vec<(usize, usize)> = a.tokens.iter().flat_map(|&n| [(n, 1), (n, n)]).collect();
        let med = probe.medians(&shapes, a.reps, || bar.inc(1))?;
        let t1 = shapes.iter().position(|&s| s == (1, 1)).map(|i| med[i]);
        for (i, &n) in a.tokens.iter().enumerate() {
            let (one, all) = (med[2 * i], med[2 * i + 1]);
            // the memory-bound floor: every weight and the cached K/V read once per forward
            let bytes = info.weights_bytes as f64 + (past * info.kv_bytes_per_token) as f64;
            rows.push(serde_json::json!({
                "past": past, "tokens": n, "ms": one * 1e3, "ms_all_rows": all * 1e3,
                "ratio_to_one_token": t1.map(|t1| one / t1),
                "bytes_read": bytes, "memory_floor_ms": bytes / bandwidth * 1e3,
                "bandwidth_gb_s": bandwidth / 1e9, "threads": threads,
            }));
        }
    }
    bar.finish_and_clear();
    let t0 = std::time::Instant::now();
    let curve = model.cost_curve()?;
    let curve_ms = t0.elapsed().as_secs_f64() * 1e3;
    if a.json {
        let v = serde_json::json!({
            "points": rows,
            "auto_cost_curve": {
                "measured_in_ms": curve_ms, "past": curve.past, "ntp_ms": curve.ntp * 1e3,
                "blocks": curve.blocks.iter().map(|&(k, first, next)| serde_json::json!({
                    "k": k, "first_forward_ms": first * 1e3, "next_forward_ms": next * 1e3,
                })).collect::<Vec<_>>(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut table = markdown_table([
        "past",
        "tokens",
        "median ms (logits of 1 row)",
        "median ms (logits of every row)",
        "t(n) / t(1)",
        "memory floor ms",
    ]);
    for r in &rows {
        table.add_row([
            r["past"].to_string(),
            r["tokens"].to_string(),
            format!("{:.3}", r["ms"].as_f64().unwrap_or(0.0)),
            format!("{:.3}", r["ms_all_rows"].as_f64().unwrap_or(0.0)),
            r["ratio_to_one_token"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
            format!("{:.3}", r["memory_floor_ms"].as_f64().unwrap_or(0.0)),
        ]);
    }
    println!("{table}");
    println!(
        "read bandwidth {:.1} GB/s ({threads} threads); weights {:.1} MB, K/V {} bytes per cached position; \
         memory floor = (weights + cached K/V) / bandwidth",
        bandwidth / 1e9,
        info.weights_bytes as f64 / 1e6,
        info.kv_bytes_per_token
    );
    if model.manifest.io.logits_index.is_none() {
        println!("(this graph has no logits_index input: it computes every row's logits anyway)");
    }
    let blocks: Vec<String> = curve
        .blocks
        .iter()
        .map(|&(k, first, next)| format!("k={k}: {:.3}/{:.3}", first * 1e3, next * 1e3))
        .collect();
    println!(
        "auto policy's cost curve (measured in {curve_ms:.0} ms at {} cached positions): NTP {:.3} ms; \
         block first/next forward ms {}",
        curve.past,
        curve.ntp * 1e3,
        blocks.join(", ")
    );
    Ok(())
}

/// `bench-forward --against B`: the two models' forwards interleaved, per (past, tokens).
fn bench_against(a: &BenchForwardArgs, other: &Path) -> anyhow::Result<()> {
    let first = load(&a.model)?;
    let second = load(&ModelArgs {
        model: Some(other.to_path_buf()),
        ..a.model.clone()
    })?;
    let (ia, ib) = (first.info(), second.info());
    if (ia.layers, ia.vocab_size) != (ib.layers, ib.vocab_size) {
        anyhow::bail!(
            "--against {}: {} layers and {} tokens against {} and {}; compare two exports of one model",
            other.display(),
            ib.layers,
            ib.vocab_size,
            ia.layers,
            ia.vocab_size
        );
    }
    let reps = a.reps;
    let longest = a.tokens.iter().copied().max().unwrap_or(1);
    let bar = ProgressBar::new((a.past.len() * reps) as u64);
    let mut rows = Vec::new();
    for &past in &a.past {
        let mut pa = first.probe(past, longest)?;
        let mut pb = second.probe(past, longest)?;
        let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); a.tokens.len()];
        for &n in &a.tokens {
            pa.time(n, 1)?;
            pb.time(n, 1)?;
        }
        for rep in 0..reps {
            for (t, &n) in times.iter_mut().zip(&a.tokens) {
                if rep % 2 == 0 {
                    t.0.push(pa.time(n, 1)?);
                    t.1.push(pb.time(n, 1)?);
                } else {
                    t.1.push(pb.time(n, 1)?);
                    t.0.push(pa.time(n, 1)?);
                }
            }
            bar.inc(1);
        }
        for ((ta, tb), &n) in times.iter_mut().zip(&a.tokens) {
            let mut ratios: Vec<f64> = ta.iter().zip(tb.iter()).map(|(x, y)| y / x).collect();
            rows.push(serde_json::json!({
                "past": past, "tokens": n, "a_ms": median(ta) * 1e3, "b_ms": median(tb) * 1e3,
                "b_over_a": median(&mut ratios),
            }));
        }
    }
    bar.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "a": first.folder.display().to_string(), "b": second.folder.display().to_string(),
            "reps": reps, "points": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut table = markdown_table([
        "past",
        "tokens",
        "A median ms",
        "B median ms",
        "B / A (median of rounds)",
    ]);
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        table.add_row([
            r["past"].to_string(),
            r["tokens"].to_string(),
            format!("{:.3}", f("a_ms")),
            format!("{:.3}", f("b_ms")),
            format!("{:.3}", f("b_over_a")),
        ]);
    }
    println!("{table}");
    println!(
        "A = {}, B = {}; {reps} interleaved rounds, the logits of the last row kept",
        first.folder.display(),
        second.folder.display()
    );
    Ok(())
}

/// An empty markdown table with this header (every table the bench commands print).
fn markdown_table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(header);
    table
}

#[cfg(feature = "serve")]
#[cfg(test)]
mod tests {
    use super::Grade;

    #[test]
    fn final_grade_reads_the_text_after_the_last_marker() {
        assert!(Grade::Final.correct("7*9=63. #### 1\n#### 80\nmore", "80"));
        assert!(!Grade::Final.correct("#### 80", "8"));
        assert!(!Grade::Final.correct("80", "80"));
    }

    #[test]
    fn json_grade_compares_values_not_spelling() {
        let answer = r#"{"name": "Ann Kim", "age": 56, "price": 465.31}"#;
        assert!(Grade::Json.correct(r#" {"age":56,"price":465.31,"name":"Ann Kim"} "#, answer));
        assert!(!Grade::Json.correct(
            r#"{"name": "Ann Kim", "age": "56", "price": 465.31}"#,
            answer
        ));
        assert!(!Grade::Json.correct(r#"{"name": "Ann Kim", "age": 56}"#, answer));
        assert!(!Grade::Json.correct(
            r#"{"name": "Ann Kim", "age": 56, "price": 465.31} extra"#,
            answer
        ));
        assert!(!Grade::Json.correct("not json", answer));
    }
}
