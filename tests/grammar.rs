//! Structured output on the demo model: every output satisfies its constraint in NTP, SBD and
//! auto, greedy and sampled; a constraint that matches the model's own output changes nothing;
//! forced tokens fill SBD blocks without forwards; invalid constraints are errors before any
//! forward; special tokens are never spelled by text.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use setblock::{
    Constraint, Error, GenerateOptions, LoadOptions, Mode, Model, Sampling, Session, StopReason,
};

const QUESTION: &str = "Ned has 5 boxes of eggs. Each box holds 7 eggs. Ned finds 14 more eggs. Ned gives 9 eggs to Ann. How many eggs does Ned have now?";

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "answer": {"type": "integer", "minimum": 0, "maximum": 999},
    "unit": {"enum": ["eggs", "boxes"]},
    "steps": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3}
  },
  "required": ["answer", "unit", "steps"],
  "additionalProperties": false
}"#;

fn demo() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let opts = LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        };
        Arc::new(Model::load(dir, &opts).expect("models/demo"))
    })
    .clone()
}

fn opts(
    mode: Mode,
    constraint: Option<Constraint>,
    temperature: f32,
    seed: u64,
) -> GenerateOptions {
    GenerateOptions {
        mode,
        block_size: Some(8),
        sampling: Sampling {
            temperature,
            seed,
            ..Sampling::default()
        },
        max_new_tokens: 120,
        constraint,
        ..GenerateOptions::default()
    }
}

fn run(o: &GenerateOptions) -> setblock::Output {
    Session::new(demo())
        .unwrap()
        .generate(QUESTION, o, |_| {})
        .unwrap()
}

/// A regex that the model's own greedy answer already matches: NTP, SBD and auto with the
/// constraint give exactly the unconstrained tokens.
#[test]
fn a_constraint_the_model_already_meets_changes_nothing() {
    let rx = r"[^#]*#### [0-9]+";
    let full = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
    for mode in [Mode::Ntp, Mode::Sbd, Mode::Auto] {
        let free = run(&opts(mode, None, 0.0, 0));
        let held = run(&opts(mode, Some(Constraint::Regex(rx.into())), 0.0, 0));
        assert_eq!(held.tokens, free.tokens, "{mode:?}");
        assert!(full.is_match(&held.text), "{mode:?}: {:?}", held.text);
    }
}

fn check_json(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text:?}"))?;
    let o = v.as_object().ok_or("not an object")?;
    let answer = o.get("answer").and_then(|a| a.as_u64()).ok_or("answer")?;
    let unit = o.get("unit").and_then(|u| u.as_str()).ok_or("unit")?;
    let steps = o.get("steps").and_then(|s| s.as_array()).ok_or("steps")?;
    let ok = answer <= 999
        && ["eggs", "boxes"].contains(&unit)
        && steps.len() <= 3
        && steps.iter().all(|s| s.as_u64().is_some_and(|n| n <= 99))
        && o.len() == 3;
    ok.then_some(())
        .ok_or_else(|| format!("does not validate: {text}"))
}

/// Every output is one JSON value that validates, in every mode, greedy and sampled; the
/// grammar ends it (no EOS needed) and SBD spends fewer forwards than NTP on it, because the
/// keys, quotes and braces are forced.
#[test]
fn json_schema_outputs_validate_in_every_mode() {
    let c = Some(Constraint::JsonSchema(SCHEMA.into()));
    let mut forwards = std::collections::HashMap::new();
    for mode in [Mode::Ntp, Mode::Sbd, Mode::Auto] {
        for (temperature, seed) in [(0.0, 0), (0.8, 1), (0.8, 2), (1.2, 3)] {
            let out = run(&opts(mode, c.clone(), temperature, seed));
            check_json(&out.text).unwrap_or_else(|e| panic!("{mode:?} t={temperature}: {e}"));
            assert_eq!(out.stats.stop_reason, StopReason::Grammar, "{mode:?}");
            if temperature == 0.0 {
                forwards.insert(
                    format!("{mode:?}"),
                    (
                        out.stats.forward_passes,
                        out.stats.generated_tokens,
                        out.stats.forced_tokens,
                    ),
                );
            }
        }
    }
    let (ntp, ntp_tokens, ntp_forced) = forwards["Ntp"];
    let (sbd, _, sbd_forced) = forwards["Sbd"];
    assert_eq!(ntp, ntp_tokens, "NTP: one forward per token");
    assert_eq!(ntp_forced, 0, "NTP + grammar forces nothing (the baseline)");
    assert!(
        sbd_forced > 0 && sbd < ntp,
        "SBD {sbd} forwards ({sbd_forced} forced) vs NTP {ntp}"
    );
}

#[test]
fn invalid_constraints_are_errors_before_any_forward() {
    let cases = [
        (
            Constraint::JsonSchema("{ not json".into()),
            "not valid JSON",
        ),
        (
            Constraint::JsonSchema(r#"{"type": "integer", "minimum": 5, "maximum": 1}"#.into()),
            "JSON schema",
        ),
        (Constraint::Regex("(unclosed".into()), "regex"),
        (
            Constraint::Lark("start: undefined_rule".into()),
            "Lark grammar",
        ),
    ];
    for (c, needle) in cases {
        let mut s = Session::new(demo()).unwrap();
        let e = s
            .generate(QUESTION, &opts(Mode::Sbd, Some(c.clone()), 0.0, 0), |_| {})
            .unwrap_err();
        assert!(matches!(e, Error::Constraint { .. }), "{c:?}: {e}");
        assert!(e.to_string().contains(needle), "{c:?}: {e}");
        assert!(s.context_tokens().is_empty(), "nothing was fed: {c:?}");
    }
}

/// The trie marks special tokens: text that reads like one is spelled with ordinary tokens, so
/// the mask token and EOS never appear inside the output. Multi-byte characters are spelled by
/// the byte-level tokens and come out whole.
#[test]
fn special_tokens_are_never_spelled_and_bytes_compose_characters() {
    let m = demo();
    let mask = m.manifest.mask_token_id;
    let want = regex::Regex::new(r"^<\|mask\|> (é|ü){2}$").unwrap();
    for mode in [Mode::Ntp, Mode::Sbd] {
        let out = run(&opts(
            mode,
            Some(Constraint::Regex(r"<\|mask\|> (é|ü){2}".into())),
            0.0,
            0,
        ));
        assert!(want.is_match(&out.text), "{:?}", out.text);
        assert!(!out.tokens.contains(&mask), "{:?}", out.tokens);
        assert_eq!(out.stats.stop_reason, StopReason::Grammar);
    }
}

/// A Lark grammar (llguidance's syntax) holds in SBD too.
#[test]
fn a_lark_grammar_holds() {
    let g = r#"
start: "Answer: " number " eggs"
number: /[0-9]{1,3}/
"#;
    let want = regex::Regex::new("^Answer: [0-9]{1,3} eggs$").unwrap();
    for mode in [Mode::Ntp, Mode::Sbd, Mode::Auto] {
        let out = run(&opts(mode, Some(Constraint::Lark(g.into())), 0.0, 0));
        assert!(want.is_match(&out.text), "{mode:?}: {:?}", out.text);
    }
}

/// Verified SBD under a JSON schema: NTP + grammar decoding's output, in fewer forwards.
#[test]
fn verified_sbd_under_a_json_schema_is_ntp_with_the_grammar() {
    let c = Some(Constraint::JsonSchema(SCHEMA.into()));
    let ntp = run(&opts(Mode::Ntp, c.clone(), 0.0, 0));
    for mode in [Mode::Sbd, Mode::Auto] {
        let o = GenerateOptions {
            verify: true,
            ..opts(mode, c.clone(), 0.0, 0)
        };
        let out = run(&o);
        assert_eq!(out.tokens, ntp.tokens, "{mode:?}");
        assert_eq!(out.stats.stop_reason, StopReason::Grammar);
        assert!(
            out.stats.forward_passes < ntp.stats.forward_passes,
            "{mode:?}: {} vs {}",
            out.stats.forward_passes,
            ntp.stats.forward_passes
        );
    }
}
