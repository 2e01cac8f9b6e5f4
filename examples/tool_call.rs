//! A tool call through the model's chat template, constrained by a JSON schema built from the
//! tool definitions: the system message lists the tools, the reply is forced to be one
//! `{"name": ..., "arguments": {...}}` object that names a listed tool with arguments of the
//! right types, the app runs the tool, and the result goes back as the next turn of the same
//! session (its KV cache is reused), which the model answers in free text.
//!
//! ```sh
//! cargo run --release --example tool_call -- --model models/smollm2-135m-sbd/fp32
//! cargo run --release --example tool_call -- --model models/smollm2-135m-sbd/fp32 \
//!     --request "How many miles is 42 km?" --mode ntp
//! ```
//!
//! Each request is decoded in NTP and SBD with the same constraint (`--mode` picks one): the
//! example prints the call, whether it validates (`grammar::satisfies`), the forwards per token
//! of the call and the tokens the grammar forced, then the tool's result and the final answer.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use setblock::grammar::satisfies;
use setblock::{Constraint, GenerateOptions, LoadOptions, Message, Mode, Model, Session};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Which {
    Ntp,
    Sbd,
    /// SBD with its drafts checked against NTP's choices (docs/sbd-verified.md)
    Verified,
    /// NTP and SBD
    Both,
    /// NTP, SBD and verified SBD
    All,
}

#[derive(Parser)]
struct Args {
    /// The model folder (it needs a chat template).
    #[arg(long, default_value = "models/smollm2-135m-sbd/fp32")]
    model: String,
    /// A request for the assistant; repeat it for several (default: a built-in set of six).
    #[arg(long)]
    request: Vec<String>,
    /// Decoding of the tool call.
    #[arg(long, value_enum, default_value = "all")]
    mode: Which,
    /// Block size of the SBD runs.
    #[arg(long, default_value_t = 8)]
    block_size: usize,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write every call and its figures here (JSON).
    #[arg(long)]
    json: Option<String>,
}

/// The tools the assistant may call: name, description, JSON schema of the arguments.
fn tools() -> Vec<(&'static str, &'static str, Value)> {
    let unit = json!({"enum": ["km", "mi", "m", "ft", "kg", "lb", "celsius", "fahrenheit"]});
    vec![
        (
            "convert_units",
            "Convert a value from one unit to another (length, mass, temperature).",
            json!({"type": "object", "properties": {"value": {"type": "number"}, "from": unit, "to": unit},
                   "required": ["value", "from", "to"], "additionalProperties": false}),
        ),
        (
            "count_words",
            "Count the words and characters of a text.",
            json!({"type": "object", "properties": {"text": {"type": "string", "maxLength": 200}},
                   "required": ["text"], "additionalProperties": false}),
        ),
        (
            "days_between",
            "The number of days between two dates (YYYY-MM-DD).",
            json!({"type": "object", "properties": {
                       "start": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                       "end": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
                   "required": ["start", "end"], "additionalProperties": false}),
        ),
    ]
}

/// One object per tool: `name` fixed to the tool's, `arguments` its schema.
fn call_schema() -> Value {
    let one = |(name, _, args): (&str, &str, Value)| {
        json!({"type": "object", "properties": {"name": {"const": name}, "arguments": args},
               "required": ["name", "arguments"], "additionalProperties": false})
    };
    json!({"anyOf": tools().into_iter().map(one).collect::<Vec<_>>()})
}

fn system_message() -> String {
    let list: Vec<Value> = tools()
        .into_iter()
        .map(|(n, d, a)| json!({"name": n, "description": d, "parameters": a}))
        .collect();
    format!(
        "You are an assistant with tools. To use one, reply with only a JSON object \
         {{\"name\": <tool name>, \"arguments\": {{...}}}}. Tools: {}",
        Value::Array(list)
    )
}

/// Metres, kilograms or degrees Celsius per unit, and the unit's dimension.
fn base(unit: &str) -> Option<(&'static str, f64)> {
    Some(match unit {
        "km" => ("length", 1000.0),
        "mi" => ("length", 1609.344),
        "m" => ("length", 1.0),
        "ft" => ("length", 0.3048),
        "kg" => ("mass", 1.0),
        "lb" => ("mass", 0.453_592_37),
        "celsius" | "fahrenheit" => ("temperature", 1.0),
        _ => return None,
    })
}

fn days_from_civil(date: &str) -> anyhow::Result<i64> {
    let p: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{date:?} is not YYYY-MM-DD"))?;
    let (y, m, d) = (p[0], p[1], p[2]);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        bail!("{date:?} is not a calendar date");
    }
    // Howard Hinnant's days_from_civil
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    Ok(era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468)
}

/// Run the tool the model called; an error is reported back to the model as the result.
fn run_tool(call: &Value) -> anyhow::Result<Value> {
    let args = &call["arguments"];
    Ok(match call["name"].as_str().unwrap_or_default() {
        "convert_units" => {
            let v = args["value"].as_f64().context("value is not a number")?;
            let (from, to) = (
                args["from"].as_str().unwrap_or(""),
                args["to"].as_str().unwrap_or(""),
            );
            let ((df, f), (dt, t)) = (
                base(from).context("unknown unit")?,
                base(to).context("unknown unit")?,
            );
            if df != dt {
                bail!("cannot convert {df} ({from}) to {dt} ({to})");
            }
            let out = match (from, to) {
                ("celsius", "fahrenheit") => v * 9.0 / 5.0 + 32.0,
                ("fahrenheit", "celsius") => (v - 32.0) * 5.0 / 9.0,
                _ => v * f / t,
            };
            json!({"value": (out * 1000.0).round() / 1000.0, "unit": to})
        }
        "count_words" => {
            let text = args["text"].as_str().unwrap_or_default();
            json!({"words": text.split_whitespace().count(), "characters": text.chars().count()})
        }
        "days_between" => {
            let s = days_from_civil(args["start"].as_str().unwrap_or_default())?;
            let e = days_from_civil(args["end"].as_str().unwrap_or_default())?;
            json!({"days": e - s})
        }
        other => bail!("no tool named {other:?}"),
    })
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
    if !model.has_chat_template() {
        bail!(
            "{} has no chat template (tokenizer_config.json chat_template): a tool call needs one",
            a.model
        );
    }
    let requests = if a.request.is_empty() {
        [
            "How many miles is 42 km?",
            "Convert 180 pounds to kilograms.",
            "It is 30 degrees Celsius outside. What is that in Fahrenheit?",
            "How many words are in the sentence 'the quick brown fox jumps over the lazy dog'?",
            "How many days are there between 2026-01-15 and 2026-03-01?",
            "How many feet is 2.5 metres?",
        ]
        .map(String::from)
        .to_vec()
    } else {
        a.request.clone()
    };
    let constraint = Constraint::JsonSchema(call_schema().to_string());
    const NTP: (&str, Mode, bool) = ("NTP", Mode::Ntp, false);
    const SBD: (&str, Mode, bool) = ("SBD", Mode::Sbd, false);
    const VERIFIED: (&str, Mode, bool) = ("SBD verified", Mode::Sbd, true);
    let modes: &[(&str, Mode, bool)] = match a.mode {
        Which::Ntp => &[NTP],
        Which::Sbd => &[SBD],
        Which::Verified => &[VERIFIED],
        Which::Both => &[NTP, SBD],
        Which::All => &[NTP, SBD, VERIFIED],
    };
    let mut rows = Vec::new();
    let (mut valid, mut total) = (0, 0);
    for request in &requests {
        println!("\nuser: {request}");
        for &(label, mode, verify) in modes {
            let mut session = Session::new(model.clone())?;
            session.set_messages(vec![Message {
                role: "system".into(),
                content: system_message(),
            }]);
            let opts = GenerateOptions {
                mode,
                block_size: Some(a.block_size),
                max_new_tokens: 160,
                constraint: Some(constraint.clone()),
                verify,
                ..GenerateOptions::default()
            };
            let call = session.generate(request, &opts, |_| {})?;
            let ok = satisfies(&model, &constraint, &call.tokens)?;
            total += 1;
            valid += usize::from(ok);
            let st = &call.stats;
            println!(
                "  {label} call ({} tokens, {:.3} forwards/token, {} forced, {:?}, valid: {ok}): {}",
                st.generated_tokens,
                st.forward_passes as f64 / st.generated_tokens.max(1) as f64,
                st.forced_tokens,
                st.stop_reason,
                call.text
            );
            let parsed: Value = serde_json::from_str(&call.text)
                .with_context(|| format!("the constrained call is not JSON: {}", call.text))?;
            let result = run_tool(&parsed).unwrap_or_else(|e| json!({"error": e.to_string()}));
            println!("  tool result: {result}");
            let answer = session.generate(
                &format!("Tool result: {result}. Answer my question in one sentence."),
                &GenerateOptions {
                    mode,
                    block_size: Some(a.block_size),
                    max_new_tokens: 60,
                    verify,
                    ..GenerateOptions::default()
                },
                |_| {},
            )?;
            println!("  {label} answer: {}", answer.text.trim());
            rows.push(json!({
                "request": request, "mode": label, "call": parsed, "valid": ok,
                "call_tokens": st.generated_tokens, "call_forwards": st.forward_passes,
                "forced_tokens": st.forced_tokens, "grammar_ms": st.grammar_ms,
                "call_total_ms": st.total_ms, "result": result, "answer": answer.text.trim(),
                "answer_prompt_tokens": answer.stats.prompt_tokens,
            }));
        }
    }
    println!("\n{valid}/{total} tool calls valid");
    if let Some(path) = a.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json!({"model": a.model, "calls": rows}))?,
        )?;
        println!("wrote {path}");
    }
    if valid != total {
        bail!(
            "{} of {total} constrained tool calls did not validate",
            total - valid
        );
    }
    Ok(())
}
