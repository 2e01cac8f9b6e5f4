//! The C ABI as a C caller uses it: handles, errors, streaming, cancel; nothing crashes.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use setblock_ffi::c_api::*;

fn fixture() -> CString {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(sb_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn load() -> *mut sb_model {
    let mut m = null_mut();
    let mut o = sb_load_options_default();
    o.threads = 1;
    assert_eq!(
        unsafe { sb_model_load(fixture().as_ptr(), &o, &mut m) },
        sb_status::SB_OK,
        "{}",
        last_error()
    );
    m
}

/// `sb_generate` with options `g` fails with `status`, and the last error contains `needle`.
fn refused(s: *mut sb_session, g: &sb_generate_options, status: sb_status, needle: &str) {
    let p = CString::new("sort 3 1 2").unwrap();
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), g, None, null_mut(), null_mut(), null_mut()) },
        status
    );
    assert!(last_error().contains(needle), "{}", last_error());
}

/// `sb_generate` of `prompt` with options `g` that must succeed: the text and the stats.
fn generate_ok(s: *mut sb_session, prompt: &str, g: &sb_generate_options) -> (String, sb_stats) {
    let p = CString::new(prompt).unwrap();
    let mut stats = sb_stats::default();
    let mut text = null_mut();
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), g, None, null_mut(), &mut stats, &mut text) },
        sb_status::SB_OK,
        "{}",
        last_error()
    );
    let out = unsafe { CStr::from_ptr(text) }
        .to_str()
        .unwrap()
        .to_string();
    unsafe { sb_string_free(text) };
    (out, stats)
}

struct Collected {
    text: String,
    blocks: usize,
    finished: bool,
    cancel_after: usize,
}

unsafe extern "C" fn collect(user: *mut c_void, ev: *const sb_event) -> c_int {
    let c = unsafe { &mut *(user as *mut Collected) };
    let ev = unsafe { &*ev };
    match ev.kind {
        sb_event_kind::SB_EVENT_BLOCK => {
            c.text
                .push_str(unsafe { CStr::from_ptr(ev.text) }.to_str().unwrap());
            let toks = unsafe { std::slice::from_raw_parts(ev.tokens, ev.n_tokens) };
            c.blocks += usize::from(!toks.is_empty());
        }
        sb_event_kind::SB_EVENT_FINISHED => c.finished = true,
        sb_event_kind::SB_EVENT_PREFILL_DONE => {}
    }
    c_int::from(c.cancel_after > 0 && c.blocks >= c.cancel_after)
}

#[test]
fn stream_a_generation_and_cancel_from_the_callback() {
    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    let prompt = CString::new("Größe 🙂 sort 3 1 2").unwrap();
    let mut o = sb_generate_options_default();
    o.max_new_tokens = 24;
    o.block_size = 4;
    o.gamma = 0.5;
    o.chat_template = 0;
    let mut c = Collected {
        text: String::new(),
        blocks: 0,
        finished: false,
        cancel_after: 0,
    };
    let mut stats = sb_stats::default();
    let mut text: *mut c_char = null_mut();
    let st = unsafe {
        sb_generate(
            s,
            prompt.as_ptr(),
            &o,
            Some(collect),
            &mut c as *mut _ as *mut c_void,
            &mut stats,
            &mut text,
        )
    };
    assert_eq!(st, sb_status::SB_OK, "{}", last_error());
    assert!(c.finished && c.blocks >= 6);
    assert_eq!(stats.generated_tokens, 24);
    assert_eq!(stats.stop_reason, 1);
    assert_eq!(unsafe { CStr::from_ptr(text) }.to_str().unwrap(), c.text);
    unsafe { sb_string_free(text) };

    // a non-zero return from the callback cancels after the 2nd block
    assert_eq!(sb_session_reset(s), sb_status::SB_OK);
    let mut c = Collected {
        text: String::new(),
        blocks: 0,
        finished: false,
        cancel_after: 2,
    };
    let st = unsafe {
        sb_generate(
            s,
            prompt.as_ptr(),
            &o,
            Some(collect),
            &mut c as *mut _ as *mut c_void,
            &mut stats,
            null_mut(),
        )
    };
    assert_eq!(st, sb_status::SB_OK);
    assert_eq!(stats.stop_reason, 3);
    assert_eq!(stats.generated_tokens, 8);

    let mut json: *mut c_char = null_mut();
    assert_eq!(
        unsafe { sb_model_info_json(m, &mut json) },
        sb_status::SB_OK
    );
    let v: serde_json::Value =
        serde_json::from_str(unsafe { CStr::from_ptr(json) }.to_str().unwrap()).unwrap();
    assert_eq!(v["layers"], 2);
    unsafe { sb_string_free(json) };
    assert_eq!(sb_session_free(s), sb_status::SB_OK);
    assert_eq!(sb_model_free(m), sb_status::SB_OK);
}

#[test]
fn null_freed_and_made_up_handles_are_errors() {
    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    assert_eq!(sb_session_free(s), sb_status::SB_OK);
    // use after free
    let p = CString::new("x").unwrap();
    assert_eq!(
        unsafe {
            sb_generate(
                s,
                p.as_ptr(),
                null(),
                None,
                null_mut(),
                null_mut(),
                null_mut(),
            )
        },
        sb_status::SB_ERR_INVALID_HANDLE
    );
    assert!(last_error().contains("not live"));
    assert_eq!(sb_session_free(s), sb_status::SB_ERR_INVALID_HANDLE);
    assert_eq!(sb_session_cancel(null_mut()), sb_status::SB_ERR_NULL);
    assert_eq!(
        sb_session_reset(0xdead_beef as *mut sb_session),
        sb_status::SB_ERR_INVALID_HANDLE
    );
    assert_eq!(
        unsafe { sb_session_new(0x1234 as *const sb_model, &mut s) },
        sb_status::SB_ERR_INVALID_HANDLE
    );
    assert_eq!(
        unsafe { sb_session_new(m, null_mut()) },
        sb_status::SB_ERR_NULL
    );
    assert_eq!(sb_model_free(null_mut()), sb_status::SB_OK);
    assert_eq!(sb_model_free(m), sb_status::SB_OK);
    assert_eq!(sb_model_free(m), sb_status::SB_ERR_INVALID_HANDLE);
}

#[test]
fn bad_strings_options_and_folders_are_errors_with_messages() {
    let mut m = null_mut();
    let bad_dir = CString::new("/nonexistent/model").unwrap();
    assert_eq!(
        unsafe { sb_model_load(bad_dir.as_ptr(), null(), &mut m) },
        sb_status::SB_ERR_MODEL
    );
    assert!(
        last_error().contains("/nonexistent/model"),
        "{}",
        last_error()
    );
    assert_eq!(
        unsafe { sb_model_load(null(), null(), &mut m) },
        sb_status::SB_ERR_NULL
    );
    let invalid = [0xffu8, 0xfe, 0];
    assert_eq!(
        unsafe { sb_model_load(invalid.as_ptr() as *const c_char, null(), &mut m) },
        sb_status::SB_ERR_UTF8
    );
    let mut o = sb_load_options_default();
    let ep = CString::new("tpu").unwrap();
    o.execution_providers = ep.as_ptr();
    assert_eq!(
        unsafe { sb_model_load(fixture().as_ptr(), &o, &mut m) },
        sb_status::SB_ERR_OPTION
    );

    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    assert_eq!(
        unsafe {
            sb_generate(
                s,
                invalid.as_ptr() as *const c_char,
                null(),
                None,
                null_mut(),
                null_mut(),
                null_mut(),
            )
        },
        sb_status::SB_ERR_UTF8
    );
    let p = CString::new("x").unwrap();
    let mut g = sb_generate_options_default();
    g.block_size = 99;
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &g, None, null_mut(), null_mut(), null_mut()) },
        sb_status::SB_ERR_OPTION
    );
    assert!(last_error().contains("block_size"), "{}", last_error());
    let mut g = sb_generate_options_default();
    g.max_new_tokens = 10_000;
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &g, None, null_mut(), null_mut(), null_mut()) },
        sb_status::SB_ERR_CONTEXT_OVERFLOW
    );
    assert!(last_error().contains("max_context"));
    // enum fields are ints: a value outside the enum is an error, not undefined behaviour
    let mut g = sb_generate_options_default();
    g.mode = 7;
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &g, None, null_mut(), null_mut(), null_mut()) },
        sb_status::SB_ERR_OPTION
    );
    assert!(last_error().contains("SB_MODE_AUTO"), "{}", last_error());
    let mut g = sb_generate_options_default();
    g.selection = -1;
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &g, None, null_mut(), null_mut(), null_mut()) },
        sb_status::SB_ERR_OPTION
    );
    assert!(last_error().contains("SB_SELECT_TOP_S"), "{}", last_error());
    // NaN is not "negative = the model's default": it is refused, as the CLI and Python do
    let mut g = sb_generate_options_default();
    g.gamma = f64::NAN;
    refused(s, &g, sb_status::SB_ERR_OPTION, "options.gamma = NaN");
    let mut g = sb_generate_options_default();
    g.chat_template = 7;
    refused(s, &g, sb_status::SB_ERR_OPTION, "options.chat_template = 7");
    let mut o = sb_load_options_default();
    o.threads = 10_000;
    let mut m2 = null_mut();
    assert_eq!(
        unsafe { sb_model_load(fixture().as_ptr(), &o, &mut m2) },
        sb_status::SB_ERR_OPTION
    );
    assert!(last_error().contains("threads = 10000"), "{}", last_error());
    let mut g = sb_generate_options_default();
    g.mode = sb_mode::SB_MODE_AUTO as c_int;
    g.max_new_tokens = 8;
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &g, None, null_mut(), null_mut(), null_mut()) },
        sb_status::SB_OK,
        "{}",
        last_error()
    );
    sb_session_free(s);
    sb_model_free(m);
}

struct Relay {
    blocks: usize,
    to_canceller: std::sync::mpsc::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

unsafe extern "C" fn relay(user: *mut c_void, ev: *const sb_event) -> c_int {
    let r = unsafe { &mut *(user as *mut Relay) };
    if unsafe { &*ev }.kind == sb_event_kind::SB_EVENT_BLOCK {
        r.blocks += 1;
        if r.blocks == 2 {
            r.to_canceller.send(()).unwrap();
            r.done.recv().unwrap(); // the other thread has cancelled before the next forward
        }
    }
    0
}

#[test]
fn cancel_from_another_thread() {
    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    let handle = s as usize;
    let p = CString::new("Question: a=2; b=6; for i in range(3): a=a+b; b=b+4\nAnswer:").unwrap();
    let mut o = sb_generate_options_default();
    o.max_new_tokens = 24;
    o.block_size = 4;
    o.gamma = 0.0;
    o.chat_template = 0;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ack, done) = std::sync::mpsc::channel();
    let canceller = std::thread::spawn(move || {
        rx.recv().unwrap();
        let st = sb_session_cancel(handle as *mut sb_session);
        ack.send(()).unwrap();
        st
    });
    let mut r = Relay {
        blocks: 0,
        to_canceller: tx,
        done,
    };
    let mut stats = sb_stats::default();
    let st = unsafe {
        sb_generate(
            s,
            p.as_ptr(),
            &o,
            Some(relay),
            &mut r as *mut _ as *mut c_void,
            &mut stats,
            null_mut(),
        )
    };
    assert_eq!(canceller.join().unwrap(), sb_status::SB_OK);
    assert_eq!(st, sb_status::SB_OK);
    assert_eq!((stats.stop_reason, stats.generated_tokens), (3, 8));
    // the session is usable afterwards
    assert_eq!(sb_session_reset(s), sb_status::SB_OK);
    assert_eq!(
        unsafe { sb_generate(s, p.as_ptr(), &o, None, null_mut(), &mut stats, null_mut()) },
        sb_status::SB_OK
    );
    assert_eq!((stats.stop_reason, stats.generated_tokens), (1, 24));
    sb_session_free(s);
    sb_model_free(m);
}

/// Four sessions over one model, each on its own thread, answer exactly what one session answers
/// alone; freeing the model while they run is safe (sessions keep it alive).
#[test]
fn sessions_on_four_threads_equal_one_alone() {
    let m = load();
    let generate = |m: usize, prompt: &str| -> String {
        let mut s = null_mut();
        assert_eq!(
            unsafe { sb_session_new(m as *mut sb_model, &mut s) },
            sb_status::SB_OK
        );
        let mut g = sb_generate_options_default();
        g.max_new_tokens = 24;
        g.chat_template = 0;
        let (out, _) = generate_ok(s, prompt, &g);
        assert_eq!(sb_session_free(s), sb_status::SB_OK);
        out
    };
    let prompts = ["sort 3 1 2", "a=1; b=2", "sort 9 8 7 6", "x"];
    let alone: Vec<String> = prompts.iter().map(|p| generate(m as usize, p)).collect();
    let handle = m as usize;
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let p = p.to_string();
            std::thread::spawn(move || (0..3).map(|_| generate(handle, &p)).collect::<Vec<_>>())
        })
        .collect();
    for (t, want) in threads.into_iter().zip(&alone) {
        for got in t.join().unwrap() {
            assert_eq!(&got, want);
        }
    }
    // a session made before the model is freed keeps it alive
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    assert_eq!(sb_model_free(m), sb_status::SB_OK);
    let mut g = sb_generate_options_default();
    g.max_new_tokens = 24;
    g.chat_template = 0;
    assert_eq!(generate_ok(s, "sort 3 1 2", &g).0, alone[0]);
    assert_eq!(sb_session_free(s), sb_status::SB_OK);
}

/// Structured output through the C ABI: a regex holds and ends the output (stop reason 4); two
/// constraints at once, an invalid one, or one that is not UTF-8 are option errors.
#[test]
fn structured_output_through_the_c_abi() {
    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    let rx = CString::new("x=[0-9]; y=[0-9]").unwrap();
    let mut g = sb_generate_options_default();
    g.regex = rx.as_ptr();
    g.chat_template = 0;
    g.max_new_tokens = 40;
    let (out, stats) = generate_ok(s, "sort 3 1 2", &g);
    let b = out.as_bytes();
    assert!(
        out.len() == 8
            && out.starts_with("x=")
            && b[2].is_ascii_digit()
            && &out[3..7] == "; y="
            && b[7].is_ascii_digit(),
        "{out:?}"
    );
    assert_eq!(stats.stop_reason, 4);
    let schema = CString::new("{\"type\": \"integer\"}").unwrap();
    let mut g2 = g;
    g2.json_schema = schema.as_ptr();
    refused(s, &g2, sb_status::SB_ERR_OPTION, "at most one");
    let bad = CString::new("(unclosed").unwrap();
    let mut g3 = g;
    g3.regex = bad.as_ptr();
    refused(s, &g3, sb_status::SB_ERR_OPTION, "regex");
    let invalid = [b'(', 0xff, 0];
    let mut g4 = g;
    g4.regex = std::ptr::null();
    g4.grammar = invalid.as_ptr() as *const c_char;
    refused(s, &g4, sb_status::SB_ERR_UTF8, "grammar");
    sb_session_free(s);
    sb_model_free(m);
}

#[test]
fn verified_sbd_through_the_c_abi_gives_the_ntp_text() {
    let m = load();
    let mut s = null_mut();
    assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
    let run = |s: *mut sb_session, g: &sb_generate_options| {
        assert_eq!(sb_session_reset(s), sb_status::SB_OK);
        let (out, stats) = generate_ok(s, "sort 3 1 2", g);
        (out, stats.generated_tokens)
    };
    let mut g = sb_generate_options_default();
    g.chat_template = 0;
    g.max_new_tokens = 30;
    g.block_size = 4;
    g.gamma = 1e9; // a whole block per forward: the random fixture's drafts are mostly cut
    let mut ntp = g;
    ntp.mode = sb_mode::SB_MODE_NTP as c_int;
    g.verify = 1;
    let want = run(s, &ntp);
    assert_eq!(run(s, &g), want);
    g.mode = sb_mode::SB_MODE_AUTO as c_int;
    assert_eq!(run(s, &g), want);
    let mut bad = g;
    bad.verify = 2;
    refused(s, &bad, sb_status::SB_ERR_OPTION, "options.verify = 2");
    // sampled values under a constraint: checked against the masked NTP distribution
    let rx = CString::new("[a-z]+").unwrap();
    let mut constrained = g;
    constrained.regex = rx.as_ptr();
    constrained.temperature = 0.5;
    constrained.mode = sb_mode::SB_MODE_SBD as c_int;
    assert_eq!(sb_session_reset(s), sb_status::SB_OK);
    let (text, _) = generate_ok(s, "sort 3 1 2", &constrained);
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase()),
        "{text:?}"
    );
    sb_session_free(s);
    sb_model_free(m);
}
