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

/// The selection rule sees each slot's distribution under the mask the grammar would have
/// there given the slots before it: where the schema lets one token through (a key, a quote, a
/// brace after a value), that slot is certain and comes with the forward that fills the value
/// before it. At gamma 0 a forward reveals one slot plus the certain ones (entropy 0); with
/// forced tokens off (so that only this can fill them) and slots scored without the grammar,
/// that is at most two tokens a forward (the slot chosen and the leftmost one, which the
/// grammar walk reveals in any case).
#[test]
fn slots_the_grammar_leaves_one_choice_come_with_the_forward_before_them() {
    let o = GenerateOptions {
        selection: Some(setblock::Selection::EbEntropy { gamma: 0.0 }),
        forced_tokens: false,
        ..opts(
            Mode::Sbd,
            Some(Constraint::JsonSchema(SCHEMA.into())),
            0.0,
            0,
        )
    };
    let out = run(&o);
    check_json(&out.text).unwrap();
    assert_eq!(out.stats.forced_tokens, 0);
    let (forwards, tokens) = (out.stats.forward_passes, out.stats.generated_tokens);
    // the keys and punctuation of {"answer": N, "unit": "U", "steps": [..]} are most of it
    assert!(
        3 * forwards < tokens,
        "{forwards} forwards for {tokens} tokens: {:?}",
        out.text
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

/// Verified SBD with sampled values under a JSON schema: every output validates, its outputs are
/// distributed as NTP + grammar sampling's (speculative sampling against the masked NTP
/// distribution, each draft slot's q including the grammar's refusals), in fewer forwards.
#[test]
fn sampled_verified_sbd_under_a_json_schema_samples_as_ntp_with_the_grammar() {
    let c = Some(Constraint::JsonSchema(SCHEMA.into()));
    // under qemu-aarch64 (scripts/aarch64.sh sets SETBLOCK_TEST_EMULATED) 1,600 generations take
    // over 20 minutes: there the outputs are checked, the distribution on every native run
    let emulated = std::env::var_os("SETBLOCK_TEST_EMULATED").is_some();
    let runs = if emulated { 30 } else { 400 };
    let mut session = Session::new(demo()).unwrap();
    let mut sample = |mode: Mode, verify: bool, seeds: std::ops::Range<u64>| {
        let mut texts = std::collections::HashMap::<String, f64>::new();
        let mut forwards = 0;
        for seed in seeds {
            session.reset();
            let o = GenerateOptions {
                verify,
                selection: Some(setblock::Selection::EbEntropy { gamma: 1e9 }),
                ..opts(mode, c.clone(), 1.0, seed)
            };
            let out = session.generate(QUESTION, &o, |_| {}).unwrap();
            check_json(&out.text).unwrap_or_else(|e| panic!("{mode:?} verify={verify}: {e}"));
            let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
            *texts
                .entry(format!("{} {}", v["answer"], v["unit"]))
                .or_default() += 1.0 / runs as f64;
            forwards += out.stats.forward_passes;
        }
        (texts, forwards)
    };
    let tv = |a: &std::collections::HashMap<String, f64>,
              b: &std::collections::HashMap<String, f64>| {
        let keys: std::collections::HashSet<_> = a.keys().chain(b.keys()).collect();
        keys.iter()
            .map(|k| (a.get(*k).unwrap_or(&0.0) - b.get(*k).unwrap_or(&0.0)).abs())
            .sum::<f64>()
            / 2.0
    };
    let (ntp, ntp_forwards) = sample(Mode::Ntp, false, 0..runs);
    let (ntp2, _) = sample(Mode::Ntp, false, runs..2 * runs);
    let (verified, forwards) = sample(Mode::Sbd, true, 0..runs);
    let (plain, _) = sample(Mode::Sbd, false, 0..runs);
    let (d_verified, d_plain, noise) = (tv(&verified, &ntp), tv(&plain, &ntp), tv(&ntp2, &ntp));
    if emulated {
        assert!(
            forwards < ntp_forwards,
            "{forwards} forwards vs NTP's {ntp_forwards}"
        );
        return;
    }
    // measured: verified 0.035, a second NTP sample 0.027, plain SBD 0.887; without the refused
    // mass in q (each slot's q as first drawn) verified was 0.892
    assert!(
        d_verified < 0.08 && d_plain > 0.5,
        "total variation from NTP + grammar sampling (answer and unit): verified {d_verified:.3}, \
         unverified {d_plain:.3}, another NTP sample {noise:.3}"
    );
    assert!(
        2 * forwards < ntp_forwards,
        "{forwards} forwards vs NTP's {ntp_forwards}"
    );
}
