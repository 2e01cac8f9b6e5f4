//! Structured output on a model folder: for each constraint (flat object, nested object with
//! arrays, enum fields, a regex date, a small Lark grammar) and each of NTP + grammar, SBD
//! without a grammar, SBD + grammar (without and with forced tokens) and verified SBD + grammar:
//! the validity of the outputs, how many equal NTP + grammar's, forwards per output and per
//! generated token (an output that grows lowers the second, not the first), forced tokens,
//! decode tokens/s and the grammar's share of the generation's time. `--from-text` adds the
//! nested schema and the date on requests whose text holds the values (an extraction app's use).
//!
//! ```sh
//! cargo run --release --example structured -- --model models/demo --json docs/structured_output.json
//! ```

use std::sync::Arc;

use clap::Parser;
use setblock::grammar::satisfies;
use setblock::{Constraint, GenerateOptions, LoadOptions, Mode, Model, Session};

#[derive(Parser)]
struct Args {
    /// The model folder.
    #[arg(long, default_value = "models/demo")]
    model: String,
    /// Prompts per constraint.
    #[arg(long, default_value_t = 10)]
    prompts: usize,
    /// Block size of the SBD runs.
    #[arg(long, default_value_t = 8)]
    block_size: usize,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The SBD runs' EB-Sampler budget (default: the model's gamma_low).
    #[arg(long)]
    gamma: Option<f64>,
    /// Write the results here.
    #[arg(long)]
    json: Option<String>,
    /// A JSONL file of field-extraction requests (`{"task": "extract", "question": ...}` rows,
    /// as SmolLM2-135M-SBD's held-out mix has them: runs/smollm2/mix/test.jsonl): adds the
    /// "extract fields" schema, decoded on these requests instead of the word problems.
    #[arg(long)]
    extract: Option<String>,
    /// Add "nested + arrays, from text" and "regex date, from text": the nested schema and the
    /// date regex on requests whose text holds the values to write (a person, a count and a list
    /// of numbers; a date in words), as an extraction app sends them. The word-problem rows ask
    /// for a record or a date the text does not hold, so their values are the model's guesses.
    #[arg(long)]
    from_text: bool,
}

/// The schema of the SmolLM2 mix's `extract` task (export/setblock_export/mix.py): a person or
/// an order, fields in the order the task writes them (also `bench/smollm2_results.py
/// extract-schema`'s).
const EXTRACT_SCHEMA: &str = include_str!("../bench/extract.schema.json");

/// The `extract` rows of a mix file, their user text.
fn extract_requests(path: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--extract {path}: cannot read it ({e})"))?;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("--extract {path}, line {}: not a JSON object ({e})", n + 1)
        })?;
        if row["task"] == "extract" {
            let q = row["question"].as_str().or(row["user"].as_str());
            out.push(
                q.ok_or_else(|| {
                    anyhow::anyhow!("--extract {path}, line {}: an extract row without \"question\" or \"user\" text", n + 1)
                })?
                    .to_string(),
            );
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "--extract {path} has no rows with \"task\": \"extract\" (runs/smollm2/mix/test.jsonl has them)"
    );
    Ok(out)
}

fn constraints() -> Vec<(&'static str, Constraint)> {
    vec![
        (
            "flat object",
            Constraint::JsonSchema(
                r#"{"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 999}, "unit": {"type": "string", "maxLength": 8}}, "required": ["answer", "unit"], "additionalProperties": false}"#.into(),
            ),
        ),
        (
            "nested + arrays",
            Constraint::JsonSchema(
                r#"{"type": "object", "properties": {"person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "boxes": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["name", "boxes"], "additionalProperties": false}, "steps": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "maxItems": 4}}, "required": ["person", "steps"], "additionalProperties": false}"#.into(),
            ),
        ),
        (
            "enum fields",
            Constraint::JsonSchema(
                r#"{"type": "object", "properties": {"operation": {"enum": ["add", "subtract", "multiply", "divide"]}, "unit": {"enum": ["eggs", "boxes", "apples"]}, "certain": {"type": "boolean"}}, "required": ["operation", "unit", "certain"], "additionalProperties": false}"#.into(),
            ),
        ),
        ("regex date", Constraint::Regex(r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])".into())),
        (
            "Lark grammar",
            Constraint::Lark(
                "start: \"Answer: \" NUMBER \" \" UNIT \".\"\nNUMBER: /[0-9]{1,3}/\nUNIT: \"eggs\" | \"boxes\"\n".into(),
            ),
        ),
    ]
}

/// The "from text" requests (`--from-text`): the values the constraint asks for are in the text;
/// with the answer that copies them (the date as text, the record as JSON).
fn text_prompt(name: &str, i: usize) -> (String, serde_json::Value) {
    const NAMES: [&str; 10] = [
        "Mia", "Omar", "Lena", "Tom", "Ana", "Raj", "Zoe", "Ivan", "Kira", "Ben",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let who = NAMES[i % 10];
    if name.starts_with("regex date") {
        let (day, month, year) = (1 + (i * 7) % 28, (i * 5) % 12, 2020 + i % 10);
        let text = format!("{who} wrote: \"The parcel arrived on {day} {} {year}.\" Write the date of arrival as YYYY-MM-DD.", MONTHS[month]);
        (text, format!("{year}-{:02}-{day:02}", month + 1).into())
    } else {
        let (boxes, a, b, c) = (2 + i % 9, 10 + 3 * i, 4 + i, 25 + 2 * i);
        let text = format!("{who} packed {boxes} boxes. The box counts on the three shelves were {a}, {b} and {c}. Write the person (name, boxes) and the shelf counts as steps, in JSON.");
        let answer =
            serde_json::json!({"person": {"name": who, "boxes": boxes}, "steps": [a, b, c]});
        (text, answer)
    }
}

/// True when `text` is `answer`: the same string, or JSON equal to it.
fn is_right(text: &str, answer: &serde_json::Value) -> bool {
    match answer {
        serde_json::Value::String(want) => text.trim() == want,
        _ => serde_json::from_str::<serde_json::Value>(text.trim()).is_ok_and(|v| &v == answer),
    }
}

fn prompt(i: usize) -> String {
    let (a, b, c, d) = (2 + i % 7, 3 + i % 5, 1 + i % 9, 1 + i % 4);
    format!("Ned has {a} boxes of eggs. Each box holds {b} eggs. Ned finds {c} more eggs. Ned gives {d} eggs to Ann. How many eggs does Ned have now?")
}

#[derive(Default, Clone, Copy)]
struct Sum {
    n: usize,
    valid: usize,
    same: usize,
    tokens: usize,
    forwards: usize,
    forced: usize,
    decode_ms: f64,
    grammar_ms: f64,
    total_ms: f64,
    /// Outputs equal to the answer (the "from text" requests, which have one).
    right: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let model = Arc::new(Model::load(
        &a.model,
        &LoadOptions {
            threads: Some(a.threads),
            ..LoadOptions::default()
        },
    )?);
    // (name, mode, with the grammar, forced tokens, verified: docs/sbd-verified.md)
    let runs = [
        ("NTP + grammar", Mode::Ntp, true, false, false),
        ("SBD, no grammar", Mode::Sbd, false, false, false),
        (
            "SBD + grammar, no forced tokens",
            Mode::Sbd,
            true,
            false,
            false,
        ),
        ("SBD + grammar", Mode::Sbd, true, true, false),
        ("SBD + grammar, verified", Mode::Sbd, true, true, true),
    ];
    let mut rows = Vec::new();
    println!("| constraint | run | valid | same as NTP + grammar | tokens/output | forwards/output | forwards/token | forced tokens | decode tokens/s | grammar share of time |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let extract = a.extract.as_deref().map(extract_requests).transpose()?;
    let mut all: Vec<(String, Constraint)> = constraints()
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    if a.from_text {
        let from = |n: &str| all.iter().find(|(m, _)| m == n).map(|(_, c)| c.clone());
        let (nested, date) = (from("nested + arrays"), from("regex date"));
        all.extend(nested.map(|c| ("nested + arrays, from text".to_string(), c)));
        all.extend(date.map(|c| ("regex date, from text".to_string(), c)));
    }
    if extract.is_some() {
        all.push((
            "extract fields".to_string(),
            Constraint::JsonSchema(EXTRACT_SCHEMA.into()),
        ));
    }
    for (name, c) in all {
        // NTP + grammar's outputs (the first run), for the "same as" column
        let mut reference: Vec<Vec<u32>> = Vec::new();
        for (run, mode, with, forced, verify) in runs {
            let mut s = Sum::default();
            for i in 0..a.prompts {
                let o = GenerateOptions {
                    mode,
                    block_size: Some(a.block_size),
                    selection: a
                        .gamma
                        .map(|gamma| setblock::Selection::EbEntropy { gamma }),
                    max_new_tokens: 96,
                    constraint: with.then(|| c.clone()),
                    forced_tokens: forced,
                    verify,
                    ..GenerateOptions::default()
                };
                let (text, answer) = match (&extract, name.as_str()) {
                    (Some(x), "extract fields") => (x[i % x.len()].clone(), None),
                    (_, n) if n.ends_with(", from text") => {
                        let (t, want) = text_prompt(n, i);
                        (t, Some(want))
                    }
                    _ => (prompt(i), None),
                };
                let out = Session::new(model.clone())?.generate(&text, &o, |_| {})?;
                let st = &out.stats;
                s.n += 1;
                s.right += usize::from(answer.is_some_and(|w| is_right(&out.text, &w)));
                s.valid += usize::from(satisfies(&model, &c, &out.tokens)?);
                if reference.len() < a.prompts {
                    reference.push(out.tokens.clone());
                }
                s.same += usize::from(reference[i] == out.tokens);
                s.tokens += st.generated_tokens;
                s.forwards += st.forward_passes;
                s.forced += st.forced_tokens;
                s.decode_ms += st.total_ms - st.prefill_ms;
                s.grammar_ms += st.grammar_ms;
                s.total_ms += st.total_ms;
            }
            let row = serde_json::json!({
                "constraint": name, "run": run, "outputs": s.n, "valid": s.valid,
                "same_as_ntp_grammar": s.same,
                "tokens": s.tokens, "forwards": s.forwards, "forced_tokens": s.forced,
                "forwards_per_token": s.forwards as f64 / s.tokens.max(1) as f64,
                "decode_tokens_per_s": s.tokens as f64 / (s.decode_ms / 1e3),
                "grammar_share": s.grammar_ms / s.total_ms,
                "right": name.ends_with(", from text").then_some(s.right),
            });
            println!(
                "| {name} | {run} | {}/{} | {}/{} | {:.1} | {:.1} | {:.3} | {} | {:.0} | {:.1}% |",
                s.valid,
                s.n,
                s.same,
                s.n,
                s.tokens as f64 / s.n as f64,
                s.forwards as f64 / s.n as f64,
                s.forwards as f64 / s.tokens.max(1) as f64,
                s.forced,
                s.tokens as f64 / (s.decode_ms / 1e3),
                100.0 * s.grammar_ms / s.total_ms
            );
            rows.push(row);
        }
    }
    // the "from text" requests have an answer: the outputs that copy the text's values right
    for r in rows.iter().filter(|r| !r["right"].is_null()) {
        println!(
            "- {} / {}: {}/{} outputs right",
            r["constraint"].as_str().unwrap_or_default(),
            r["run"].as_str().unwrap_or_default(),
            r["right"],
            r["outputs"]
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)? + "\n")?;
    }
    Ok(())
}
