//! The C ABI with arbitrary options, prompts and stop strings (raw bytes, invalid UTF-8, huge
//! numbers, NaN), over the tiny fixture, and now and then a load with arbitrary load options: a
//! status, never a caught panic (SB_ERR_PANIC) or an abort; the session stays usable.
#![no_main]

use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use setblock_ffi::c_api::*;

#[derive(Arbitrary, Debug)]
struct Options {
    mode: i32,
    block_size: u32,
    selection: i32,
    gamma: f64,
    threshold: f64,
    top_s: u32,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    repetition_penalty: f32,
    seed: u64,
    max_new_tokens: u16,
    stop: Option<Vec<u8>>,
    chat_template: i32,
}

#[derive(Arbitrary, Debug)]
struct Input {
    prompt: Vec<u8>,
    options: Option<Options>,
    cancel_at: Option<u8>,
    reset: bool,
    load: Option<(u32, u32, Vec<u8>)>,
}

struct Shared(*mut sb_session);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn fixture() -> CString {
    CString::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny-llama"
    ))
    .unwrap()
}

fn session() -> *mut sb_session {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let mut o = sb_load_options_default();
        o.threads = 1;
        let mut m = null_mut();
        assert_eq!(
            unsafe { sb_model_load(fixture().as_ptr(), &o, &mut m) },
            sb_status::SB_OK
        );
        let mut s = null_mut();
        assert_eq!(unsafe { sb_session_new(m, &mut s) }, sb_status::SB_OK);
        Shared(s)
    })
    .0
}

fn c_bytes(mut b: Vec<u8>) -> Vec<u8> {
    b.retain(|&c| c != 0);
    b.push(0);
    b
}

unsafe extern "C" fn on_event(user: *mut c_void, event: *const sb_event) -> i32 {
    let left = &mut *(user as *mut i32);
    let _ = &*event;
    *left -= 1;
    i32::from(*left == 0)
}

fuzz_target!(|input: Input| {
    if let Some((max_context, threads, eps)) = input.load {
        let mut o = sb_load_options_default();
        o.max_context = max_context % 4096;
        o.threads = threads % 64;
        let eps = c_bytes(eps);
        o.execution_providers = eps.as_ptr() as *const c_char;
        let mut m = null_mut();
        let st = unsafe { sb_model_load(fixture().as_ptr(), &o, &mut m) };
        assert_ne!(st, sb_status::SB_ERR_PANIC);
        if st == sb_status::SB_OK {
            assert_eq!(sb_model_free(m), sb_status::SB_OK);
        }
    }
    let s = session();
    let prompt = c_bytes(input.prompt);
    let mut stop_buf = Vec::new();
    let options = input.options.map(|o| {
        let mut g = sb_generate_options_default();
        g.mode = o.mode;
        g.block_size = o.block_size;
        g.selection = o.selection;
        g.gamma = o.gamma;
        g.threshold = o.threshold;
        g.top_s = o.top_s;
        g.temperature = o.temperature;
        g.top_k = o.top_k;
        g.top_p = o.top_p;
        g.repetition_penalty = o.repetition_penalty;
        g.seed = o.seed;
        g.max_new_tokens = u32::from(o.max_new_tokens);
        if let Some(stop) = o.stop {
            stop_buf = c_bytes(stop);
            g.stop = stop_buf.as_ptr() as *const c_char;
        }
        g.chat_template = o.chat_template;
        g
    });
    let opt_ptr = options
        .as_ref()
        .map_or(null(), |g| g as *const sb_generate_options);
    let mut left = i32::from(input.cancel_at.unwrap_or(0));
    let cb: sb_event_callback = if input.cancel_at.is_some() {
        Some(on_event)
    } else {
        None
    };
    let mut text = null_mut();
    let st = unsafe {
        sb_generate(
            s,
            prompt.as_ptr() as *const c_char,
            opt_ptr,
            cb,
            &mut left as *mut i32 as *mut c_void,
            null_mut(),
            &mut text,
        )
    };
    assert_ne!(st, sb_status::SB_ERR_PANIC, "{:?}", unsafe {
        std::ffi::CStr::from_ptr(sb_last_error())
    });
    if st == sb_status::SB_OK {
        unsafe { sb_string_free(text) };
    }
    if input.reset || st == sb_status::SB_ERR_CONTEXT_OVERFLOW || st == sb_status::SB_OK {
        assert_eq!(sb_session_reset(s), sb_status::SB_OK);
    }
});
