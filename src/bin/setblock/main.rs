//! `setblock`: generate, chat, info, bench and serve from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
use bench::{BenchArgs, BenchForwardArgs};
use indicatif::ProgressBar;
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
    /// NTP against SBD over a JSONL prompt file: forwards, tokens per forward, tokens/s, accuracy
    /// (with --verify, each SBD and auto system also runs verified, side by side).
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
    /// EB budget, slots left to right (gamma 0 = the leftmost slot per forward).
    EbLeftToRight,
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
    /// EB-Sampler entropy budget (default: the model's low gamma; with --verify, infinity: a
    /// whole block a forward, the fewest forwards measured).
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
    /// SBD and auto: check every drafted token against the model's own NTP choice before it is
    /// shown (the checks ride on the next block's first forward): greedy output equals NTP
    /// decoding's, sampled output is distributed as NTP sampling's; under a structured-output
    /// constraint, as NTP + grammar decoding's (greedy: the same output).
    #[arg(long)]
    verify: bool,
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
    let default = if d.verify {
        setblock::VERIFIED_GAMMA
    } else {
        model.manifest.gamma.low
    };
    let gamma = gamma.or(d.gamma).unwrap_or(default);
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
            SelectArg::EbLeftToRight => Selection::EbLeftToRight { gamma },
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
        verify: d.verify,
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
        match (&*i.quantization, &i.quantization_options) {
            ("none", _) => "float32".into(),
            (q, Some(o)) => format!("{q}: {o}"),
            (q, None) => q.to_string(),
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
        "KV cache budget  {:.2} MiB per session ({} bytes per position; layout {}{})",
        mib(i.kv_cache_bytes as u64),
        i.kv_bytes_per_token,
        i.kv_layout,
        if i.kv_layout == setblock::manifest::KV_HEAD_MAJOR_SHARED {
            ", written in place by the graph's fused attention"
        } else {
            ""
        }
    );
    println!("providers        {}", i.execution_providers.join(" > "));
    println!("ONNX Runtime     {}", i.ort_library.display());
    Ok(())
}

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
        Command::Bench(a) => bench::bench(a),
        Command::BenchForward(a) => bench::bench_forward(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
