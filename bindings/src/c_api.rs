//! The C ABI (`include/setblock.h`). Opaque handles are ids checked against a registry, so a NULL,
//! freed or made-up handle is an error code, never a crash; every entry point catches panics;
//! every fallible call returns an `sb_status` and leaves a message for `sb_last_error()`.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use setblock::Event;

use crate::api::{
    self, DecodeMode, GenerateConfig, OutputConstraint, SbModel, SbSession, SetblockError,
    SlotSelection,
};

/// Status codes of every fallible call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_status {
    /// Success.
    SB_OK = 0,
    /// A required pointer argument was NULL.
    SB_ERR_NULL = 1,
    /// The handle is not a live handle of this library (never created, or already freed).
    SB_ERR_INVALID_HANDLE = 2,
    /// A string argument is not valid UTF-8.
    SB_ERR_UTF8 = 3,
    /// An option is out of range.
    SB_ERR_OPTION = 4,
    /// The model folder is wrong or missing.
    SB_ERR_MODEL = 5,
    /// Prompt + max_new_tokens does not fit the KV cache.
    SB_ERR_CONTEXT_OVERFLOW = 6,
    /// ONNX Runtime failed (library, provider, run).
    SB_ERR_RUNTIME = 7,
    /// The session is generating on another thread.
    SB_ERR_BUSY = 8,
    /// A bug: a Rust panic was caught at the boundary.
    SB_ERR_PANIC = 9,
}
use sb_status::*;

/// Opaque model handle.
#[repr(C)]
pub struct sb_model {
    _private: [u8; 0],
}

/// Opaque session handle.
#[repr(C)]
pub struct sb_session {
    _private: [u8; 0],
}

/// Options of `sb_model_load`. Start from `sb_load_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sb_load_options {
    /// KV cache capacity in positions (0 = min(model limit, 2048)).
    pub max_context: u32,
    /// Intra-op threads (0 = ONNX Runtime's choice).
    pub threads: u32,
    /// Comma-separated providers, e.g. "cuda,cpu" (NULL = CPU).
    pub execution_providers: *const c_char,
    /// Path to libonnxruntime (NULL = discovery: ORT_DYLIB_PATH, project copy, next to the executable).
    pub ort_library: *const c_char,
}

/// Decoding mode.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_mode {
    /// Set Block Decoding.
    SB_MODE_SBD = 0,
    /// One token per forward.
    SB_MODE_NTP = 1,
    /// Per block, NTP or SBD at the block size (<= block_size) with the highest expected
    /// tokens/s on this device (measured cost curve, running tokens per forward).
    SB_MODE_AUTO = 2,
}

/// Slot selection rule.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_selection {
    /// EB-Sampler, entropy order (uses `gamma`).
    SB_SELECT_EB_ENTROPY = 0,
    /// EB budget, confidence order (uses `gamma`).
    SB_SELECT_EB_CONFIDENCE = 1,
    /// Confidence threshold (uses `threshold`).
    SB_SELECT_THRESHOLD = 2,
    /// Fixed number per forward (uses `top_s`).
    SB_SELECT_TOP_S = 3,
    /// EB budget, slots left to right (uses `gamma`).
    SB_SELECT_EB_LEFT_TO_RIGHT = 4,
}

/// Options of `sb_generate`. Start from `sb_generate_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sb_generate_options {
    /// One of `sb_mode` (an int, so that a value outside the enum is an error, not undefined
    /// behaviour).
    pub mode: c_int,
    /// Block size (0 = min(8, largest trained)).
    pub block_size: u32,
    /// One of `sb_selection`.
    pub selection: c_int,
    /// Entropy budget; a negative value means the model's low gamma (NaN is an error).
    pub gamma: f64,
    /// For SB_SELECT_THRESHOLD.
    pub threshold: f64,
    /// For SB_SELECT_TOP_S.
    pub top_s: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Upper bound on generated tokens.
    pub max_new_tokens: u32,
    /// One stop string (NULL = none).
    pub stop: *const c_char,
    /// 1 = apply the chat template, 0 = raw prompt, -1 = when the model has one (other values
    /// are an error).
    pub chat_template: c_int,
    /// Structured output: a JSON schema (its JSON text) the reply must be valid against (NULL =
    /// none). At most one of json_schema, regex and grammar.
    pub json_schema: *const c_char,
    /// Structured output: a regular expression the whole reply matches (NULL = none).
    pub regex: *const c_char,
    /// Structured output: a Lark grammar, llguidance's syntax (NULL = none).
    pub grammar: *const c_char,
    /// 1 = SBD and auto check every drafted token against the model's own NTP choice before
    /// it is streamed (greedy output equals NTP decoding's, sampled output is distributed as
    /// NTP sampling's; under a constraint, as NTP + grammar decoding's), 0 = off (other
    /// values are an error).
    pub verify: c_int,
}

/// Kind of a streamed event.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_event_kind {
    /// The first forward finished.
    SB_EVENT_PREFILL_DONE = 0,
    /// Tokens were committed.
    SB_EVENT_BLOCK = 1,
    /// The generation ended (`stats` is set).
    SB_EVENT_FINISHED = 2,
}

/// Measurements of one generation.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sb_stats {
    /// Tokens fed for this turn.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Forward passes, prefill included.
    pub forward_passes: u32,
    /// generated / forwards.
    pub tokens_per_forward: f64,
    /// First forward.
    pub prefill_ms: f64,
    /// Until the first committed tokens.
    pub time_to_first_token_ms: f64,
    /// After the first forward.
    pub decode_tokens_per_s: f64,
    /// Whole generation.
    pub total_ms: f64,
    /// Time inside ONNX Runtime.
    pub onnx_runtime_ms: f64,
    /// 0 eos, 1 max tokens, 2 stop string, 3 cancelled, 4 the constraint is complete.
    pub stop_reason: c_int,
    /// Time spent by the structured-output constraint.
    pub grammar_ms: f64,
    /// Tokens the constraint forced into block slots without a forward.
    pub forced_tokens: u32,
}

/// One streamed event; pointers are valid only during the callback.
#[repr(C)]
pub struct sb_event {
    /// What happened.
    pub kind: sb_event_kind,
    /// UTF-8 text that became safe to show (NUL-terminated; empty for non-block events).
    pub text: *const c_char,
    /// Committed token ids.
    pub tokens: *const u32,
    /// Number of ids.
    pub n_tokens: usize,
    /// Forwards this block used.
    pub forwards: u32,
    /// Set for SB_EVENT_FINISHED.
    pub stats: sb_stats,
}

/// Event callback: return 0 to go on, non-zero to cancel the generation.
pub type sb_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const sb_event) -> c_int>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn fail(status: sb_status, msg: &str) -> sb_status {
    set_error(msg);
    status
}

fn from_error(e: SetblockError) -> sb_status {
    let status = match &e {
        SetblockError::InvalidModel { .. } => SB_ERR_MODEL,
        SetblockError::InvalidOption { .. } => SB_ERR_OPTION,
        SetblockError::ContextOverflow { .. } => SB_ERR_CONTEXT_OVERFLOW,
        SetblockError::Runtime { .. } | SetblockError::Listener { .. } => SB_ERR_RUNTIME,
        SetblockError::Busy { .. } => SB_ERR_BUSY,
    };
    fail(status, &e.to_string())
}

/// Run an entry point: catch panics, clear the last error on success.
fn guarded(f: impl FnOnce() -> sb_status) -> sb_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(s) => {
            if s == SB_OK {
                set_error("");
            }
            s
        }
        Err(_) => fail(
            SB_ERR_PANIC,
            "internal error (a Rust panic was caught at the C boundary); please report it",
        ),
    }
}

struct Registry {
    next: AtomicU64,
    models: Mutex<HashMap<u64, Arc<SbModel>>>,
    sessions: Mutex<HashMap<u64, Arc<SbSession>>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        next: AtomicU64::new(1),
        models: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
    })
}

fn lookup<T>(map: &Mutex<HashMap<u64, Arc<T>>>, id: u64, what: &str) -> Result<Arc<T>, sb_status> {
    if id == 0 {
        return Err(fail(SB_ERR_NULL, &format!("the {what} handle is NULL")));
    }
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()
        .ok_or_else(|| {
            fail(
                SB_ERR_INVALID_HANDLE,
                &format!("the {what} handle is not live (never created, or already freed)"),
            )
        })
}

/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn opt_str(p: *const c_char, what: &'static str) -> Result<Option<String>, sb_status> {
    if p.is_null() {
        return Ok(None);
    }
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Ok(Some(s.to_string())),
        Err(_) => Err(fail(SB_ERR_UTF8, &format!("{what} is not valid UTF-8"))),
    }
}

/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn req_str(p: *const c_char, what: &'static str) -> Result<String, sb_status> {
    match unsafe { opt_str(p, what) }? {
        Some(s) => Ok(s),
        None => Err(fail(SB_ERR_NULL, &format!("{what} is NULL"))),
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return status,
        }
    };
}

/// The message of the last failed call on this thread ("" after a success). Valid until the next
/// call on this thread; do not free it.
#[no_mangle]
pub extern "C" fn sb_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Default load options.
#[no_mangle]
pub extern "C" fn sb_load_options_default() -> sb_load_options {
    sb_load_options {
        max_context: 0,
        threads: 0,
        execution_providers: std::ptr::null(),
        ort_library: std::ptr::null(),
    }
}

/// Default generation options (SBD, the model's block size and low gamma, greedy, 256 tokens).
#[no_mangle]
pub extern "C" fn sb_generate_options_default() -> sb_generate_options {
    sb_generate_options {
        mode: sb_mode::SB_MODE_SBD as c_int,
        block_size: 0,
        selection: sb_selection::SB_SELECT_EB_ENTROPY as c_int,
        gamma: -1.0,
        threshold: 0.9,
        top_s: 2,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed: 0,
        max_new_tokens: 256,
        stop: std::ptr::null(),
        chat_template: -1,
        json_schema: std::ptr::null(),
        regex: std::ptr::null(),
        grammar: std::ptr::null(),
        verify: 0,
    }
}

/// Load a model folder. `options` may be NULL (defaults). On success `*out` holds a handle to
/// free with `sb_model_free`.
///
/// # Safety
/// `model_dir` must be a NUL-terminated string, `options` NULL or valid, `out` writable.
#[no_mangle]
pub unsafe extern "C" fn sb_model_load(
    model_dir: *const c_char,
    options: *const sb_load_options,
    out: *mut *mut sb_model,
) -> sb_status {
    guarded(|| {
        if out.is_null() {
            return fail(SB_ERR_NULL, "out is NULL");
        }
        let dir = tri!(unsafe { req_str(model_dir, "model_dir") });
        let o = if options.is_null() {
            sb_load_options_default()
        } else {
            unsafe { *options }
        };
        let eps: Vec<String> =
            tri!(unsafe { opt_str(o.execution_providers, "execution_providers") })
                .map(|s| {
                    s.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default();
        let lib = tri!(unsafe { opt_str(o.ort_library, "ort_library") });
        let config = api::LoadConfig {
            model_dir: dir,
            max_context: (o.max_context > 0).then_some(o.max_context),
            threads: (o.threads > 0).then_some(o.threads),
            execution_providers: eps,
            ort_library: lib,
        };
        let model = match SbModel::load(config) {
            Ok(m) => m,
            Err(e) => return from_error(e),
        };
        let r = registry();
        let id = r.next.fetch_add(1, Ordering::Relaxed);
        r.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, model);
        unsafe { *out = id as usize as *mut sb_model };
        SB_OK
    })
}

/// Free a model (sessions made from it keep it alive until they are freed). NULL is a no-op.
#[no_mangle]
pub extern "C" fn sb_model_free(model: *mut sb_model) -> sb_status {
    guarded(|| {
        if model.is_null() {
            return SB_OK;
        }
        match registry()
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(model as usize as u64))
        {
            Some(_) => SB_OK,
            None => fail(
                SB_ERR_INVALID_HANDLE,
                "the model handle is not live (never created, or already freed)",
            ),
        }
    })
}

/// The model's facts and memory budget as JSON (free with `sb_string_free`).
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn sb_model_info_json(
    model: *const sb_model,
    out: *mut *mut c_char,
) -> sb_status {
    guarded(|| {
        if out.is_null() {
            return fail(SB_ERR_NULL, "out is NULL");
        }
        let m = tri!(lookup(&registry().models, model as usize as u64, "model"));
        let json = m.info().json;
        unsafe { *out = CString::new(json).unwrap_or_default().into_raw() };
        SB_OK
    })
}

/// Free a string returned by this library. NULL is a no-op.
///
/// # Safety
/// `s` must be NULL or a string from this library, not freed before.
#[no_mangle]
pub unsafe extern "C" fn sb_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(unsafe { CString::from_raw(s) });
    }
}

/// A new conversation (its own KV cache) on `model`.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn sb_session_new(
    model: *const sb_model,
    out: *mut *mut sb_session,
) -> sb_status {
    guarded(|| {
        if out.is_null() {
            return fail(SB_ERR_NULL, "out is NULL");
        }
        let m = tri!(lookup(&registry().models, model as usize as u64, "model"));
        let s = match SbSession::new(m) {
            Ok(s) => s,
            Err(e) => return from_error(e),
        };
        let r = registry();
        let id = r.next.fetch_add(1, Ordering::Relaxed);
        r.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, s);
        unsafe { *out = id as usize as *mut sb_session };
        SB_OK
    })
}

/// Free a session. A generation running on another thread is cancelled and finishes first.
#[no_mangle]
pub extern "C" fn sb_session_free(session: *mut sb_session) -> sb_status {
    guarded(|| {
        if session.is_null() {
            return SB_OK;
        }
        match registry()
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(session as usize as u64))
        {
            Some(s) => {
                s.cancel();
                SB_OK
            }
            None => fail(
                SB_ERR_INVALID_HANDLE,
                "the session handle is not live (never created, or already freed)",
            ),
        }
    })
}

/// Cancel the session's generation in progress; safe from any thread.
#[no_mangle]
pub extern "C" fn sb_session_cancel(session: *mut sb_session) -> sb_status {
    guarded(|| {
        let s = tri!(lookup(
            &registry().sessions,
            session as usize as u64,
            "session"
        ));
        s.cancel();
        SB_OK
    })
}

/// Forget the conversation (SB_ERR_BUSY while a generation runs).
#[no_mangle]
pub extern "C" fn sb_session_reset(session: *mut sb_session) -> sb_status {
    guarded(|| {
        let s = tri!(lookup(
            &registry().sessions,
            session as usize as u64,
            "session"
        ));
        match s.reset() {
            Ok(()) => SB_OK,
            Err(e) => from_error(e),
        }
    })
}

fn stats_of(s: &setblock::Stats) -> sb_stats {
    sb_stats {
        prompt_tokens: s.prompt_tokens as u32,
        generated_tokens: s.generated_tokens as u32,
        forward_passes: s.forward_passes as u32,
        tokens_per_forward: s.tokens_per_forward,
        prefill_ms: s.prefill_ms,
        time_to_first_token_ms: s.time_to_first_token_ms,
        decode_tokens_per_s: s.decode_tokens_per_s,
        total_ms: s.total_ms,
        onnx_runtime_ms: s.onnx_runtime_ms,
        stop_reason: match s.stop_reason {
            setblock::StopReason::Eos => 0,
            setblock::StopReason::MaxTokens => 1,
            setblock::StopReason::StopString => 2,
            setblock::StopReason::Cancelled => 3,
            setblock::StopReason::Grammar => 4,
        },
        grammar_ms: s.grammar_ms,
        forced_tokens: s.forced_tokens as u32,
    }
}

fn config_of(
    o: &sb_generate_options,
    stop: Option<String>,
    model_gamma_low: f64,
) -> Result<GenerateConfig, sb_status> {
    if o.gamma.is_nan() {
        return Err(fail(
            SB_ERR_OPTION,
            "options.gamma = NaN: must be a number >= 0, or negative for the model's low gamma",
        ));
    }
    let gamma = (o.gamma >= 0.0).then_some(o.gamma);
    let chat_template = match o.chat_template {
        -1 => None,
        0 => Some(false),
        1 => Some(true),
        c => {
            return Err(fail(
                SB_ERR_OPTION,
                &format!(
                    "options.chat_template = {c}: must be 1 (apply the model's template), 0 (raw prompt) or -1 (when the model has one)"
                ),
            ))
        }
    };
    let verify = match o.verify {
        0 => false,
        1 => true,
        v => {
            return Err(fail(
                SB_ERR_OPTION,
                &format!("options.verify = {v}: must be 1 (check drafts) or 0 (off)"),
            ))
        }
    };
    let mode = match o.mode {
        m if m == sb_mode::SB_MODE_SBD as c_int => DecodeMode::Sbd,
        m if m == sb_mode::SB_MODE_NTP as c_int => DecodeMode::Ntp,
        m if m == sb_mode::SB_MODE_AUTO as c_int => DecodeMode::Auto,
        m => {
            return Err(fail(
                SB_ERR_OPTION,
                &format!(
                "options.mode = {m}: must be SB_MODE_SBD (0), SB_MODE_NTP (1) or SB_MODE_AUTO (2)"
            ),
            ))
        }
    };
    let selection = [
        sb_selection::SB_SELECT_EB_ENTROPY,
        sb_selection::SB_SELECT_EB_CONFIDENCE,
        sb_selection::SB_SELECT_THRESHOLD,
        sb_selection::SB_SELECT_TOP_S,
        sb_selection::SB_SELECT_EB_LEFT_TO_RIGHT,
    ]
    .into_iter()
    .find(|&v| v as c_int == o.selection)
    .ok_or_else(|| {
        fail(
            SB_ERR_OPTION,
            &format!(
                "options.selection = {}: must be one of SB_SELECT_EB_ENTROPY (0), SB_SELECT_EB_CONFIDENCE (1), SB_SELECT_THRESHOLD (2), SB_SELECT_TOP_S (3), SB_SELECT_EB_LEFT_TO_RIGHT (4)",
                o.selection
            ),
        )
    })?;
    Ok(GenerateConfig {
        mode,
        block_size: (o.block_size > 0).then_some(o.block_size),
        selection: match (selection, gamma) {
            (sb_selection::SB_SELECT_EB_ENTROPY, None) => None,
            (sb_selection::SB_SELECT_EB_ENTROPY, Some(g)) => {
                Some(SlotSelection::EbEntropy { gamma: g })
            }
            (sb_selection::SB_SELECT_EB_CONFIDENCE, g) => Some(SlotSelection::EbConfidence {
                gamma: g.unwrap_or(model_gamma_low),
            }),
            (sb_selection::SB_SELECT_THRESHOLD, _) => {
                Some(SlotSelection::Threshold { tau: o.threshold })
            }
            (sb_selection::SB_SELECT_TOP_S, _) => Some(SlotSelection::TopS { s: o.top_s }),
            (sb_selection::SB_SELECT_EB_LEFT_TO_RIGHT, g) => Some(SlotSelection::EbLeftToRight {
                gamma: g.unwrap_or(model_gamma_low),
            }),
        },
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        repetition_penalty: o.repetition_penalty,
        seed: o.seed,
        max_new_tokens: o.max_new_tokens,
        stop: stop.into_iter().collect(),
        chat_template,
        constraint: None,
        verify,
    })
}

/// Generate a reply to `prompt` (UTF-8). Events go to `callback` (may be NULL) with `user_data`;
/// a non-zero return cancels. On success `*out_stats` (may be NULL) holds the measurements and
/// `*out_text` (may be NULL) the whole text, to free with `sb_string_free`.
///
/// # Safety
/// Pointers must be NULL where allowed or valid; `callback` must be safe to call with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn sb_generate(
    session: *mut sb_session,
    prompt: *const c_char,
    options: *const sb_generate_options,
    callback: sb_event_callback,
    user_data: *mut c_void,
    out_stats: *mut sb_stats,
    out_text: *mut *mut c_char,
) -> sb_status {
    guarded(|| {
        let s = tri!(lookup(
            &registry().sessions,
            session as usize as u64,
            "session"
        ));
        let prompt = tri!(unsafe { req_str(prompt, "prompt") });
        let o = if options.is_null() {
            sb_generate_options_default()
        } else {
            unsafe { *options }
        };
        let stop = tri!(unsafe { opt_str(o.stop, "stop") });
        let mut config = tri!(config_of(&o, stop, s.gamma_low()));
        let constraints = [
            tri!(unsafe { opt_str(o.json_schema, "json_schema") })
                .map(|schema| OutputConstraint::JsonSchema { schema }),
            tri!(unsafe { opt_str(o.regex, "regex") })
                .map(|pattern| OutputConstraint::Regex { pattern }),
            tri!(unsafe { opt_str(o.grammar, "grammar") })
                .map(|grammar| OutputConstraint::Lark { grammar }),
        ];
        let mut given = constraints.into_iter().flatten();
        config.constraint = given.next();
        if given.next().is_some() {
            return fail(
                SB_ERR_OPTION,
                "options: set at most one of json_schema, regex and grammar",
            );
        }
        let cancel = s.cancel_handle().clone();
        let mut text_buf = CString::default();
        let result = s.generate_with(&prompt, &config, &mut |e: &Event| {
            let Some(cb) = callback else { return };
            let empty: [u32; 0] = [];
            let mut ev = sb_event {
                kind: sb_event_kind::SB_EVENT_PREFILL_DONE,
                text: c"".as_ptr(),
                tokens: empty.as_ptr(),
                n_tokens: 0,
                forwards: 0,
                stats: sb_stats::default(),
            };
            match e {
                Event::PrefillDone { .. } => {}
                Event::Block {
                    tokens,
                    text,
                    forwards,
                } => {
                    text_buf = CString::new(text.replace('\0', " ")).unwrap_or_default();
                    ev.kind = sb_event_kind::SB_EVENT_BLOCK;
                    ev.text = text_buf.as_ptr();
                    ev.tokens = tokens.as_ptr();
                    ev.n_tokens = tokens.len();
                    ev.forwards = *forwards as u32;
                }
                Event::Finished(stats) => {
                    ev.kind = sb_event_kind::SB_EVENT_FINISHED;
                    ev.stats = stats_of(stats);
                }
            }
            if unsafe { cb(user_data, &ev) } != 0 {
                cancel.cancel();
            }
        });
        match result {
            Ok(r) => {
                if !out_stats.is_null() {
                    unsafe { *out_stats = stats_of(&r.stats) };
                }
                if !out_text.is_null() {
                    unsafe {
                        *out_text = CString::new(r.text.replace('\0', " "))
                            .unwrap_or_default()
                            .into_raw()
                    };
                }
                SB_OK
            }
            Err(e) => from_error(e),
        }
    })
}
