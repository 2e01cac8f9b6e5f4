//! `setblock`: generate, chat, info and bench from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use setblock::{
    Constraint, Event, ExecutionProvider, GenerateOptions, LoadOptions, Mode, Model, Sampling,
    Selection, Session,
};

#[derive(Parser)]
#[command(
    name = "setblock",
    version,
    about = "Set Block Decoding language models on ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a reply to one prompt, streaming it to the terminal.
    Generate(GenerateArgs),
    /// An interactive, multi-turn conversation (/reset starts over, /quit or Ctrl-D ends).
    Chat(ChatArgs),
    /// The model, the execution provider and the memory budget.
    Info(InfoArgs),
    /// NTP against SBD over a JSONL prompt file: forwards, tokens per forward, tokens/s, accuracy.
    Bench(BenchArgs),
    /// The cost of one forward against the number of tokens in it, at several past lengths.
    BenchForward(BenchForwardArgs),
    /// An OpenAI-compatible HTTP server (chat/completions, completions, models, health, metrics).
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
}

#[cfg(feature = "serve")]
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind: loopback by default; 0.0.0.0 exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (default: SETBLOCK_API_KEY if set, else no key).
    #[arg(long, env = "SETBLOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Generations at once over the shared model (each has its own KV cache).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Requests that may wait for a free slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Default and largest max_tokens of a request.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
}

#[derive(Args)]
struct BenchForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens per forward.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 32])]
    tokens: Vec<usize>,
    /// Cached positions before the forward.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 128, 384])]
    past: Vec<usize>,
    /// Timed runs per point (median reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model folder (default: the bundled demo model, models/demo).
    #[arg(long)]
    model: Option<PathBuf>,
    /// KV cache capacity in positions (default: min(model limit, 2048)).
    #[arg(long)]
    max_context: Option<usize>,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Execution provider(s) in order: cpu, cuda[:N], tensorrt[:N], coreml, nnapi, xnnpack.
    #[arg(long = "ep", value_delimiter = ',')]
    eps: Vec<String>,
    /// Path to libonnxruntime (default: ORT_DYLIB_PATH, then .setblock/onnxruntime, then next to the executable).
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Set Block Decoding at --block-size.
    Sbd,
    /// One token per forward: the baseline.
    Ntp,
    /// Per block, NTP or SBD at the block size (<= --block-size) with the highest expected
    /// tokens/s, from this device's measured cost curve and the running tokens per forward.
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum SelectArg {
    /// EB-Sampler, entropy order (the paper's).
    Eb,
    /// EB budget, confidence order.
    EbConfidence,
    /// Reveal every slot with confidence >= --threshold.
    Threshold,
    /// Reveal --top-s slots per forward.
    TopS,
}

#[derive(Args, Clone)]
struct DecodeArgs {
    /// sbd (Set Block Decoding), ntp (one token per forward: the baseline) or auto.
    #[arg(long, value_enum, default_value = "sbd")]
    mode: ModeArg,
    /// Block size k (1..=largest trained; default: the model's default_block_size).
    #[arg(long)]
    block_size: Option<usize>,
    /// EB-Sampler entropy budget (default: the model's low gamma).
    #[arg(long)]
    gamma: Option<f64>,
    /// Slot selection rule.
    #[arg(long, value_enum, default_value = "eb")]
    selection: SelectArg,
    /// Confidence threshold for --selection threshold.
    #[arg(long, default_value_t = 0.9)]
    threshold: f64,
    /// Slots per forward for --selection top-s.
    #[arg(long, default_value_t = 2)]
    top_s: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Upper bound on generated tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not apply the model's chat template.
    #[arg(long)]
    raw: bool,
    /// Structured output: the reply is one JSON value valid against the JSON schema in FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "grammar"])]
    json_schema: Option<PathBuf>,
    /// Structured output: the whole reply matches this regular expression.
    #[arg(long, value_name = "RE", conflicts_with = "grammar")]
    regex: Option<String>,
    /// Structured output: the reply follows the Lark grammar in FILE (llguidance's syntax).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

/// The structured-output constraint of the decode options, reading its file.
fn constraint(d: &DecodeArgs) -> anyhow::Result<Option<Constraint>> {
    let read = |flag: &str, p: &PathBuf| {
        std::fs::read_to_string(p)
            .with_context(|| format!("{flag} {}: cannot read it", p.display()))
    };
    Ok(if let Some(p) = &d.json_schema {
        Some(Constraint::JsonSchema(read("--json-schema", p)?))
    } else if let Some(p) = &d.grammar {
        Some(Constraint::Lark(read("--grammar", p)?))
    } else {
        d.regex.clone().map(Constraint::Regex)
    })
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// The prompt (with the demo model: a question).
    #[arg(long)]
    prompt: String,
    /// Print one JSON object (text, counts, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// JSONL file: one object per line with "prompt" (or "question") and optionally "answer".
    #[arg(long)]
    prompts: PathBuf,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Gammas to run in SBD mode (default: the model's low and high).
    #[arg(long, value_delimiter = ',')]
    gammas: Vec<f64>,
    /// Timed passes over the prompts (systems interleaved prompt by prompt); accuracy and forward
    /// counts come from the first. A warm-up of up to 5 prompts per system runs before, untimed.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only the NTP system (for an NTP-trained baseline model).
    #[arg(long)]
    ntp_only: bool,
    /// Also run the `auto` block policy at each gamma.
    #[arg(long)]
    auto: bool,
    /// JSON output (one object with a row per system).
    #[arg(long)]
    json: bool,
}

fn default_model() -> anyhow::Result<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
        .iter()
        .map(|r| r.join("models/demo"))
        .find(|p| p.join("setblock.json").is_file())
        .context("no --model given and the bundled demo model (models/demo) was not found from here; pass --model DIR")
}

fn load(a: &ModelArgs) -> anyhow::Result<Arc<Model>> {
    let dir = match &a.model {
        Some(d) => d.clone(),
        None => default_model()?,
    };
    let eps = a
        .eps
        .iter()
        .map(|e| ExecutionProvider::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = LoadOptions {
        max_context: a.max_context,
        threads: a.threads,
        execution_providers: eps,
        ort_library: a.ort_library.clone(),
    };
    let spin = ProgressBar::new_spinner().with_message(format!("loading {}", dir.display()));
    spin.enable_steady_tick(Duration::from_millis(100));
    let model = Model::load(&dir, &opts);
    spin.finish_and_clear();
    Ok(Arc::new(model?))
}

fn options(d: &DecodeArgs, model: &Model, gamma: Option<f64>) -> anyhow::Result<GenerateOptions> {
    let gamma = gamma.or(d.gamma).unwrap_or(model.manifest.gamma.low);
    Ok(GenerateOptions {
        constraint: constraint(d)?,
        mode: match d.mode {
            ModeArg::Sbd => Mode::Sbd,
            ModeArg::Ntp => Mode::Ntp,
            ModeArg::Auto => Mode::Auto,
        },
        block_size: d.block_size,
        selection: Some(match d.selection {
            SelectArg::Eb => Selection::EbEntropy { gamma },
            SelectArg::EbConfidence => Selection::EbConfidence { gamma },
            SelectArg::Threshold => Selection::Threshold { tau: d.threshold },
            SelectArg::TopS => Selection::TopS { s: d.top_s },
        }),
        sampling: Sampling {
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            repetition_penalty: d.repetition_penalty,
            seed: d.seed,
        },
        max_new_tokens: d.max_new_tokens,
        stop: d.stop.clone(),
        chat_template: if d.raw { Some(false) } else { None },
        forced_tokens: true,
    })
}

fn stream_to_stdout(e: &Event) {
    if let Event::Block { text, .. } = e {
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let model = load(&a.model)?;
    let opts = options(&a.decode, &model, None)?;
    let mut session = Session::new(model)?;
    let (block_size, selection) = session.resolve(&opts)?;
    if a.json {
        let out = session.generate(&a.prompt, &opts, |_| {})?;
        let s = &out.stats;
        let v = serde_json::json!({
            "text": out.text,
            "tokens": out.tokens,
            "prompt_tokens": s.prompt_tokens,
            "generated_tokens": s.generated_tokens,
            "forward_passes": s.forward_passes,
            "tokens_per_forward": s.tokens_per_forward,
            "stop_reason": s.stop_reason,
            "prefill_ms": s.prefill_ms,
            "time_to_first_token_ms": s.time_to_first_token_ms,
            "decode_tokens_per_s": s.decode_tokens_per_s,
            "total_ms": s.total_ms,
            "mode": match opts.mode { Mode::Sbd => "sbd", Mode::Ntp => "ntp", Mode::Auto => "auto" },
            "sbd_blocks": s.sbd_blocks,
            "grammar_ms": s.grammar_ms,
            "forced_tokens": s.forced_tokens,
            "block_size": block_size,
            "selection": format!("{selection:?}"),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let out = session.generate(&a.prompt, &opts, stream_to_stdout)?;
        let s = &out.stats;
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated in {} forward passes ({:.2} tokens/forward), TTFT {:.1} ms, {:.0} tokens/s, stop: {:?}]",
            s.prompt_tokens, s.generated_tokens, s.forward_passes, s.tokens_per_forward, s.time_to_first_token_ms, s.decode_tokens_per_s, s.stop_reason
        );
    }
    Ok(())
}

fn chat(a: ChatArgs) -> anyhow::Result<()> {
    let model = load(&a.model)?;
    let opts = options(&a.decode, &model, None)?;
    let mut session = Session::new(model)?;
    let generating = Arc::new(AtomicBool::new(false));
    ctrlc_cancel(session.cancel_handle(), generating.clone());
    let stdin = std::io::stdin();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                session.reset();
                println!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        generating.store(true, Ordering::SeqCst);
        let r = session.generate(line, &opts, stream_to_stdout);
        generating.store(false, Ordering::SeqCst);
        match r {
            Ok(out) => {
                let s = out.stats;
                println!();
                eprintln!(
                    "[{} tokens, {} forwards, {:.0} tokens/s, stop: {:?}]",
                    s.generated_tokens, s.forward_passes, s.decode_tokens_per_s, s.stop_reason
                );
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
}

/// Ctrl-C cancels the generation in progress; at the prompt it exits.
fn ctrlc_cancel(cancel: setblock::CancelHandle, generating: Arc<AtomicBool>) {
    let r = ctrlc::set_handler(move || {
        if generating.load(Ordering::SeqCst) {
            cancel.cancel();
        } else {
            std::process::exit(130);
        }
    });
    if let Err(e) = r {
        eprintln!("warning: Ctrl-C will end the process instead of the reply ({e})");
    }
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let model = load(&a.model)?;
    let i = model.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("model            {}", i.folder.display());
    println!(
        "architecture     {} ({} layers, vocab {})",
        i.architecture, i.layers, i.vocab_size
    );
    println!(
        "weights          {:.1} MiB ({})",
        mib(i.weights_bytes),
        if i.quantization == "none" {
            "float32".into()
        } else {
            i.quantization.clone()
        }
    );
    println!(
        "block sizes      {}..={} (trained), gamma low {} / high {}",
        i.block_sizes.0, i.block_sizes.1, i.gamma.0, i.gamma.1
    );
    println!(
        "chat template    {}",
        if i.chat_template {
            "yes (applied by default; --raw to skip)"
        } else {
            "no"
        }
    );
    println!(
        "max context      {} positions (model limit {}; --max-context)",
        i.max_context, i.max_positions
    );
    println!(
        "KV cache budget  {:.2} MiB per session ({} bytes per position)",
        mib(i.kv_cache_bytes as u64),
        i.kv_bytes_per_token
    );
    println!("providers        {}", i.execution_providers.join(" > "));
    println!("ONNX Runtime     {}", i.ort_library.display());
    Ok(())
}

#[derive(serde::Deserialize)]
struct BenchRow {
    prompt: Option<String>,
    question: Option<String>,
    answer: Option<String>,
    task: Option<String>,
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
    sbd_blocks: usize,
    accuracy: Option<f64>,
    per_task_accuracy: std::collections::BTreeMap<String, f64>,
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
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
        rows.push((prompt, r.answer, r.task.unwrap_or_else(|| "all".into())));
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
    let mut systems: Vec<(String, GenerateOptions)> = Vec::new();
    let mut ntp = options(&a.decode, &model, None)?;
    ntp.mode = Mode::Ntp;
    systems.push(("ntp".into(), ntp));
    for g in gammas.iter().filter(|_| !a.ntp_only) {
        let mut o = options(&a.decode, &model, Some(*g))?;
        o.mode = Mode::Sbd;
        systems.push((format!("sbd gamma={g}"), o.clone()));
        if a.auto {
            o.mode = Mode::Auto;
            systems.push((format!("auto gamma={g}"), o));
        }
    }
    let curve = model.cost_curve()?;
    let mut session = Session::new(model)?;
    let block_sizes = systems
        .iter()
        .map(|(_, o)| session.resolve(o).map(|r| r.0))
        .collect::<Result<Vec<usize>, _>>()?;
    let passes = a.repeat.max(1);
    for (prompt, _, _) in rows.iter().take(5) {
        for (_, opts) in &systems {
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
        .map(|(n, _)| BenchResult {
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
    let mut predicted_s = vec![0.0f64; systems.len()];
    for pass in 0..passes {
        for (prompt, answer, task) in &rows {
            // interleave systems prompt by prompt so drift in machine load hits all of them alike
            for (si, (name, opts)) in systems.iter().enumerate() {
                bar.set_message(name.clone());
                session.reset();
                let out = session.generate(prompt, opts, |_| {})?;
                bar.inc(1);
                let r = &mut acc[si];
                let st = &out.stats;
                let k = block_sizes[si];
                // decode forwards: all but the first (prefill + first block)
                let later = st.forward_passes.saturating_sub(1) as f64;
                let later_blocks = st.sbd_blocks.saturating_sub(1) as f64;
                predicted_s[si] += match opts.mode {
                    Mode::Ntp => curve.seconds(1, later, 0.0),
                    Mode::Sbd => curve.seconds(k, later, later_blocks),
                    Mode::Auto => None,
                }
                .unwrap_or(f64::NAN);
                if pass == 0 {
                    r.sbd_blocks += st.sbd_blocks;
                    r.prompts += 1;
                    r.generated_tokens += out.stats.generated_tokens;
                    r.forward_passes += out.stats.forward_passes;
                    if let Some(ans) = answer {
                        let e = correct[si].entry(task.clone()).or_default();
                        e.0 +=
                            usize::from(final_answer(&out.text).as_deref() == Some(ans.as_str()));
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
    let ntp_forwards = acc[0].forward_passes as f64;
    for (si, r) in acc.iter_mut().enumerate() {
        r.tokens_per_forward = r.generated_tokens as f64 / r.forward_passes.max(1) as f64;
        r.forward_reduction_vs_ntp = ntp_forwards / r.forward_passes.max(1) as f64;
        r.decode_tokens_per_s = r.generated_tokens as f64 * reps / decode_time[si].max(1e-9);
        r.mean_ttft_ms = ttft[si] / (reps * r.prompts.max(1) as f64);
        r.runtime_overhead_pct = 100.0 * (total_ms[si] - ort_ms[si]) / total_ms[si].max(1e-9);
        r.predicted_decode_tokens_per_s = (predicted_s[si].is_finite() && predicted_s[si] > 0.0)
            .then(|| r.generated_tokens as f64 * reps / predicted_s[si]);
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
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "system",
        "forwards",
        "tokens/forward",
        "forward reduction",
        "decode tokens/s",
        "cost-curve prediction",
        "TTFT ms",
        "outside ORT %",
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
            format!("{:.1}", r.mean_ttft_ms),
            format!("{:.1}", r.runtime_overhead_pct),
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

fn bench_forward(a: BenchForwardArgs) -> anyhow::Result<()> {
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
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
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

#[cfg(feature = "serve")]
fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let model = match &a.model.model {
        Some(d) => d.clone(),
        None => default_model()?,
    };
    let load = LoadOptions {
        max_context: a.model.max_context,
        threads: a.model.threads,
        execution_providers: a
            .model
            .eps
            .iter()
            .map(|e| ExecutionProvider::parse(e))
            .collect::<Result<Vec<_>, _>>()?,
        ort_library: a.model.ort_library.clone(),
    };
    let cfg = setblock::serve::ServeConfig {
        model,
        load,
        addr: std::net::SocketAddr::new(a.host, a.port),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        parallel: a.parallel,
        queue: a.queue,
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(setblock::serve::run(cfg))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Info(a) => info(a),
        Command::Bench(a) => bench(a),
        Command::BenchForward(a) => bench_forward(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
