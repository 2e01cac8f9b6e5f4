//! Soak: many generations in one process over one shared model, RSS sampled throughout.
//!
//! Mixed NTP / SBD / auto, greedy and sampled, multi-turn conversations with resets, and a cancel
//! storm: a thread cancels generations at random moments (before, during and after forwards,
//! during prefill). Every generation must end (cancel latency measured), the session must go on
//! working, and the resident set must stay flat after warm-up.
//!
//! ```sh
//! cargo run --release --example soak -- --generations 10000 --json docs/soak.json
//! ```
//! `scripts/soak.sh` runs it (and the C example under valgrind); docs/reliability.md has the figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use setblock::{
    GenerateOptions, LoadOptions, Mode, Model, Sampling, Selection, Session, StopReason,
};

#[derive(Parser)]
struct Args {
    /// The model folder.
    #[arg(long, default_value = "models/demo")]
    model: String,
    /// Generations in all (split across the sessions).
    #[arg(long, default_value_t = 10_000)]
    generations: usize,
    /// Sessions, each on its own thread, over the one model.
    #[arg(long, default_value_t = 2)]
    sessions: usize,
    /// One generation in this many gets a cancel at a random moment.
    #[arg(long, default_value_t = 8)]
    cancel_every: u64,
    /// RSS samples (evenly spaced over the run).
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Fail when RSS grows by more than this after the first tenth of the run.
    #[arg(long, default_value_t = 16.0)]
    max_growth_mib: f64,
    /// Write the summary and the RSS series here.
    #[arg(long)]
    json: Option<String>,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn prompt(rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..3) {
        0 => {
            let n = rng.random_range(3..9);
            let nums: Vec<String> = (0..n).map(|_| rng.random_range(0..100).to_string()).collect();
            format!("sort {}", nums.join(" "))
        }
        1 => format!(
            "Ned has {} boxes of eggs. Each box holds {} eggs. Ned gives {} eggs to Ann. How many eggs does Ned have now?",
            rng.random_range(2..9),
            rng.random_range(2..9),
            rng.random_range(1..9)
        ),
        _ => format!(
            "a={}; b={}; for i in range({}): a=a+b",
            rng.random_range(0..9),
            rng.random_range(0..9),
            rng.random_range(1..4)
        ),
    }
}

fn options(rng: &mut ChaCha8Rng) -> GenerateOptions {
    let mode = [Mode::Ntp, Mode::Sbd, Mode::Auto][rng.random_range(0..3)];
    let sampled = rng.random_bool(0.5);
    GenerateOptions {
        mode,
        block_size: Some([2, 4, 8, 16][rng.random_range(0..4)]),
        selection: Some(match rng.random_range(0..3) {
            0 => Selection::EbEntropy {
                gamma: rng.random_range(0.0..1.0),
            },
            1 => Selection::Threshold {
                tau: rng.random_range(0.5..1.0),
            },
            _ => Selection::TopS {
                s: rng.random_range(1..5),
            },
        }),
        sampling: if sampled {
            Sampling {
                temperature: rng.random_range(0.3..1.2),
                top_k: rng.random_range(0..50),
                top_p: rng.random_range(0.5..1.0),
                repetition_penalty: 1.0,
                seed: rng.random(),
            }
        } else {
            Sampling::default()
        },
        max_new_tokens: rng.random_range(1..64),
        ..GenerateOptions::default()
    }
}

#[derive(Default)]
struct Tally {
    generations: u64,
    tokens: u64,
    forwards: u64,
    cancelled: u64,
    resets: u64,
    context_full: u64,
    errors: Vec<String>,
    max_cancel_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let model = Arc::new(Model::load(
        &a.model,
        &LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        },
    )?);
    let done = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let series = Arc::new(Mutex::new(vec![(0u64, rss_mib())]));
    let t0 = Instant::now();
    let per = a.generations.div_ceil(a.sessions.max(1));
    let every = (a.generations / a.samples.max(1)).max(1) as u64;
    let mut workers = Vec::new();
    for w in 0..a.sessions.max(1) {
        let (model, done, tally, series) =
            (model.clone(), done.clone(), tally.clone(), series.clone());
        let (seed, cancel_every) = (a.seed * 1000 + w as u64, a.cancel_every.max(1));
        workers.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut s = Session::new(model)?;
            let cancel = s.cancel_handle();
            for _ in 0..per {
                let opts = options(&mut rng);
                let turn_over = rng.random_bool(0.3);
                if turn_over {
                    s.reset();
                }
                // a cancel at a random moment: before the start, in prefill, in a forward, after
                let canceller = (rng.random_range(0..cancel_every) == 0).then(|| {
                    let c = cancel.clone();
                    let delay = Duration::from_micros(rng.random_range(0..4000));
                    let sent = Arc::new(Mutex::new(None::<Instant>));
                    let sent2 = sent.clone();
                    let h = std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        *sent2.lock().unwrap() = Some(Instant::now());
                        c.cancel();
                    });
                    (h, sent)
                });
                let r = s.generate(&prompt(&mut rng), &opts, |_| {});
                let ended = Instant::now();
                let mut t = tally.lock().unwrap();
                if turn_over {
                    t.resets += 1;
                }
                match r {
                    Ok(out) => {
                        t.tokens += out.stats.generated_tokens as u64;
                        t.forwards += out.stats.forward_passes as u64;
                        if out.stats.stop_reason == StopReason::Cancelled {
                            t.cancelled += 1;
                        }
                    }
                    Err(setblock::Error::ContextOverflow { .. }) => {
                        t.context_full += 1;
                        s.reset();
                    }
                    Err(e) => t.errors.push(e.to_string()),
                }
                if let Some((h, sent)) = canceller {
                    drop(t);
                    h.join().expect("canceller");
                    let sent = *sent.lock().unwrap();
                    let mut t = tally.lock().unwrap();
                    if let Some(at) = sent.filter(|&at| at <= ended) {
                        t.max_cancel_ms = t.max_cancel_ms.max((ended - at).as_secs_f64() * 1e3);
                    }
                } else {
                    drop(t);
                }
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if n % every == 0 {
                    series.lock().unwrap().push((n, rss_mib()));
                }
            }
            tally.lock().unwrap().generations += per as u64;
            Ok(())
        }));
    }
    for w in workers {
        w.join().expect("worker thread")?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let t = tally.lock().unwrap();
    let series = series.lock().unwrap().clone();
    let warm = series
        .iter()
        .find(|(n, _)| *n >= (a.generations / 10) as u64)
        .map_or(series[0].1, |s| s.1);
    let last = series.last().map_or(0.0, |s| s.1);
    let peak = series.iter().map(|s| s.1).fold(0.0, f64::max);
    let growth = last - warm;
    let summary = serde_json::json!({
        "model": a.model, "generations": t.generations, "sessions": a.sessions,
        "seconds": seconds, "tokens": t.tokens, "forwards": t.forwards,
        "cancelled": t.cancelled, "resets": t.resets, "context_full_resets": t.context_full,
        "errors": t.errors.len(), "first_errors": t.errors.iter().take(5).collect::<Vec<_>>(),
        "max_cancel_latency_ms": t.max_cancel_ms,
        "rss_mib": {"start": series[0].1, "after_warmup": warm, "end": last, "peak": peak,
                    "growth_after_warmup": growth},
        "rss_series": series,
    });
    println!(
        "{} generations ({} tokens, {} forwards) in {:.0} s on {} sessions: {} cancelled (longest cancel {:.1} ms), {} errors; RSS {:.1} MiB at start, {:.1} after warm-up, {:.1} at the end (peak {:.1})",
        t.generations, t.tokens, t.forwards, seconds, a.sessions, t.cancelled, t.max_cancel_ms,
        t.errors.len(), series[0].1, warm, last, peak
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    anyhow::ensure!(
        t.errors.is_empty(),
        "errors: {:?}",
        &t.errors[..t.errors.len().min(5)]
    );
    anyhow::ensure!(
        growth <= a.max_growth_mib,
        "RSS grew {growth:.1} MiB after warm-up (limit --max-growth-mib {})",
        a.max_growth_mib
    );
    Ok(())
}
