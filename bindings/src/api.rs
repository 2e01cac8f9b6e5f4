//! The uniffi surface: `SbModel`, `SbSession`, records for options, events and stats.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use setblock::{
    Constraint, Event, ExecutionProvider, GenerateOptions, LoadOptions, Mode, Model, Sampling,
    Selection, Session,
};

/// Every error, with the runtime's message (it names the constraint and the option to change).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum SetblockError {
    /// The model folder, its manifest, tokenizer or graph is wrong or missing.
    #[error("{message}")]
    InvalidModel {
        /// What is wrong.
        message: String,
    },
    /// An option is out of range, or the input is unusable.
    #[error("{message}")]
    InvalidOption {
        /// What is wrong.
        message: String,
    },
    /// Prompt + max_new_tokens does not fit the KV cache.
    #[error("{message}")]
    ContextOverflow {
        /// What is wrong.
        message: String,
    },
    /// ONNX Runtime (library, provider or a failed run).
    #[error("{message}")]
    Runtime {
        /// What is wrong.
        message: String,
    },
    /// The listener raised (threw): the generation was cancelled and this carries its error.
    #[error("{message}")]
    Listener {
        /// The listener's error, as the foreign language described it.
        message: String,
    },
    /// The session is generating on another thread.
    #[error("{message}")]
    Busy {
        /// What is wrong.
        message: String,
    },
}

impl From<setblock::Error> for SetblockError {
    fn from(e: setblock::Error) -> Self {
        use setblock::Error as E;
        let message = e.to_string();
        match e {
            E::MissingFile { .. }
            | E::ModelFile { .. }
            | E::Manifest { .. }
            | E::UnsupportedFormat { .. }
            | E::Graph { .. }
            | E::Tokenizer(_) => SetblockError::InvalidModel { message },
            E::InvalidOption { .. } | E::Template(_) | E::InvalidUtf8(_) | E::Constraint { .. } => {
                SetblockError::InvalidOption { message }
            }
            E::ContextOverflow { .. } => SetblockError::ContextOverflow { message },
            E::Runtime(_) | E::ExecutionProvider { .. } | E::Ort(_) => {
                SetblockError::Runtime { message }
            }
            E::Busy => SetblockError::Busy { message },
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LoadConfig {
    /// The model folder.
    pub model_dir: String,
    /// KV cache capacity (default: min(model limit, 2048)).
    #[uniffi(default = None)]
    pub max_context: Option<u32>,
    /// Intra-op threads (default: ONNX Runtime's choice).
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    /// Providers in order: "cpu", "cuda", "tensorrt", "coreml", "nnapi", "xnnpack".
    #[uniffi(default = [])]
    pub execution_providers: Vec<String>,
    /// Path to libonnxruntime (default: ORT_DYLIB_PATH, the project copy, next to the executable).
    #[uniffi(default = None)]
    pub ort_library: Option<String>,
}

/// NTP (the baseline) or SBD.
#[derive(Debug, Clone, Copy, uniffi::Enum)]
pub enum DecodeMode {
    /// Set Block Decoding.
    Sbd,
    /// One token per forward.
    Ntp,
    /// Per block, NTP or SBD at the block size (<= block_size) with the highest expected
    /// tokens/s on this device (measured cost curve, running tokens per forward).
    Auto,
}

/// Slot selection of the SBD loop.
#[derive(Debug, Clone, Copy, uniffi::Enum)]
pub enum SlotSelection {
    /// EB-Sampler, entropy order.
    EbEntropy {
        /// Entropy budget.
        gamma: f64,
    },
    /// EB budget, confidence order.
    EbConfidence {
        /// Entropy budget.
        gamma: f64,
    },
    /// EB budget, slots left to right (gamma 0: the leftmost slot per forward).
    EbLeftToRight {
        /// Entropy budget.
        gamma: f64,
    },
    /// Every slot with confidence >= tau.
    Threshold {
        /// Confidence threshold.
        tau: f64,
    },
    /// A fixed number per forward.
    TopS {
        /// Slots per forward.
        s: u32,
    },
}

/// Options of one generation (defaults: SBD, the model's block size and low gamma, greedy).
#[derive(Debug, Clone, uniffi::Record)]
pub struct GenerateConfig {
    /// NTP or SBD (no default: say which).
    pub mode: DecodeMode,
    /// Block size (default: min(8, largest trained)).
    #[uniffi(default = None)]
    pub block_size: Option<u32>,
    /// Slot selection (default: EB-Sampler at the model's low gamma).
    #[uniffi(default = None)]
    pub selection: Option<SlotSelection>,
    /// 0 = greedy.
    #[uniffi(default = 0.0)]
    pub temperature: f32,
    /// 0 = off.
    #[uniffi(default = 0)]
    pub top_k: u32,
    /// 1 = off.
    #[uniffi(default = 1.0)]
    pub top_p: f32,
    /// 1 = off.
    #[uniffi(default = 1.0)]
    pub repetition_penalty: f32,
    /// Sampling seed.
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Upper bound on generated tokens.
    #[uniffi(default = 256)]
    pub max_new_tokens: u32,
    /// Stop strings.
    #[uniffi(default = [])]
    pub stop: Vec<String>,
    /// Apply the chat template (default: when the model has one).
    #[uniffi(default = None)]
    pub chat_template: Option<bool>,
    /// Structured output (default: none).
    #[uniffi(default = None)]
    pub constraint: Option<OutputConstraint>,
    /// SBD and auto: check every drafted token against the model's own NTP choice before it is
    /// streamed: greedy output equals NTP decoding's, sampled output is distributed as NTP
    /// sampling's; under a constraint, as NTP + grammar decoding's.
    #[uniffi(default = false)]
    pub verify: bool,
}

/// What the output must match (structured output).
#[derive(Debug, Clone, uniffi::Enum)]
pub enum OutputConstraint {
    /// One JSON value valid against this JSON schema (its JSON text).
    JsonSchema {
        /// The schema.
        schema: String,
    },
    /// A regular expression the whole output matches.
    Regex {
        /// The expression.
        pattern: String,
    },
    /// A Lark grammar (llguidance's syntax).
    Lark {
        /// The grammar.
        grammar: String,
    },
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            mode: DecodeMode::Sbd,
            block_size: None,
            selection: None,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            chat_template: None,
            constraint: None,
            verify: false,
        }
    }
}

impl From<&GenerateConfig> for GenerateOptions {
    fn from(c: &GenerateConfig) -> Self {
        GenerateOptions {
            mode: match c.mode {
                DecodeMode::Sbd => Mode::Sbd,
                DecodeMode::Ntp => Mode::Ntp,
                DecodeMode::Auto => Mode::Auto,
            },
            block_size: c.block_size.map(|k| k as usize),
            selection: c.selection.map(|s| match s {
                SlotSelection::EbEntropy { gamma } => Selection::EbEntropy { gamma },
                SlotSelection::EbConfidence { gamma } => Selection::EbConfidence { gamma },
                SlotSelection::EbLeftToRight { gamma } => Selection::EbLeftToRight { gamma },
                SlotSelection::Threshold { tau } => Selection::Threshold { tau },
                SlotSelection::TopS { s } => Selection::TopS { s: s as usize },
            }),
            sampling: Sampling {
                temperature: c.temperature,
                top_k: c.top_k as usize,
                top_p: c.top_p,
                repetition_penalty: c.repetition_penalty,
                seed: c.seed,
            },
            max_new_tokens: c.max_new_tokens as usize,
            stop: c.stop.clone(),
            chat_template: c.chat_template,
            constraint: c.constraint.clone().map(|k| match k {
                OutputConstraint::JsonSchema { schema } => Constraint::JsonSchema(schema),
                OutputConstraint::Regex { pattern } => Constraint::Regex(pattern),
                OutputConstraint::Lark { grammar } => Constraint::Lark(grammar),
            }),
            forced_tokens: true,
            verify: c.verify,
        }
    }
}

/// Measurements of one generation (see `setblock::Stats`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct GenerationStats {
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
    /// "eos", "max_tokens", "stop_string", "cancelled" or "grammar" (the constraint is complete).
    pub stop_reason: String,
    /// Time spent by the structured-output constraint.
    pub grammar_ms: f64,
    /// Tokens the constraint forced into block slots without a forward.
    pub forced_tokens: u32,
}

impl From<&setblock::Stats> for GenerationStats {
    fn from(s: &setblock::Stats) -> Self {
        GenerationStats {
            prompt_tokens: s.prompt_tokens as u32,
            generated_tokens: s.generated_tokens as u32,
            forward_passes: s.forward_passes as u32,
            tokens_per_forward: s.tokens_per_forward,
            prefill_ms: s.prefill_ms,
            time_to_first_token_ms: s.time_to_first_token_ms,
            decode_tokens_per_s: s.decode_tokens_per_s,
            total_ms: s.total_ms,
            onnx_runtime_ms: s.onnx_runtime_ms,
            stop_reason: stop_reason_name(s.stop_reason).into(),
            grammar_ms: s.grammar_ms,
            forced_tokens: s.forced_tokens as u32,
        }
    }
}

/// The snake_case name of a stop reason (shared with the C ABI).
pub fn stop_reason_name(r: setblock::StopReason) -> &'static str {
    match r {
        setblock::StopReason::Eos => "eos",
        setblock::StopReason::MaxTokens => "max_tokens",
        setblock::StopReason::StopString => "stop_string",
        setblock::StopReason::Cancelled => "cancelled",
        setblock::StopReason::Grammar => "grammar",
    }
}

/// One event of the stream.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum GenerationEvent {
    /// The first forward finished.
    PrefillDone {
        /// Tokens fed.
        prompt_tokens: u32,
        /// Its time.
        elapsed_ms: f64,
    },
    /// Committed tokens and the text that became safe to show.
    Block {
        /// Token ids.
        tokens: Vec<u32>,
        /// Text.
        text: String,
        /// Forwards used.
        forwards: u32,
    },
    /// The end.
    Finished {
        /// Measurements.
        stats: GenerationStats,
    },
}

impl From<&Event> for GenerationEvent {
    fn from(e: &Event) -> Self {
        match e {
            Event::PrefillDone {
                prompt_tokens,
                elapsed_ms,
            } => GenerationEvent::PrefillDone {
                prompt_tokens: *prompt_tokens as u32,
                elapsed_ms: *elapsed_ms,
            },
            Event::Block {
                tokens,
                text,
                forwards,
            } => GenerationEvent::Block {
                tokens: tokens.clone(),
                text: text.clone(),
                forwards: *forwards as u32,
            },
            Event::Finished(s) => GenerationEvent::Finished { stats: s.into() },
        }
    }
}

/// The result of a generation.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GenerationResult {
    /// Generated text.
    pub text: String,
    /// Generated ids.
    pub tokens: Vec<u32>,
    /// Measurements.
    pub stats: GenerationStats,
}

/// What a listener may raise (throw) to stop a generation; any other exception of the foreign
/// language is carried the same way.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ListenerError {
    /// The listener failed.
    #[error("{message}")]
    Failed {
        /// Its description.
        message: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ListenerError::Failed { message: e.reason }
    }
}

/// Receives the stream (called on the generating thread). An exception it raises (throws)
/// cancels the generation, which then fails with `SetblockError::Listener` carrying it.
#[uniffi::export(with_foreign)]
pub trait GenerationListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: GenerationEvent) -> Result<(), ListenerError>;
}

/// Generations running through the uniffi face, so that a host shutting down can cancel them
/// (`shutdown_generations`) before its runtime stops their threads.
static ACTIVE: Mutex<Vec<(u64, setblock::CancelHandle)>> = Mutex::new(Vec::new());
static ACTIVE_DONE: Condvar = Condvar::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

fn active() -> std::sync::MutexGuard<'static, Vec<(u64, setblock::CancelHandle)>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registered for its lifetime in `ACTIVE`.
struct Running(u64);

impl Running {
    fn start(cancel: &setblock::CancelHandle) -> Result<Running, SetblockError> {
        let mut list = active();
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            return Err(SetblockError::Runtime {
                message: "setblock is shutting down (shutdown_generations was called, e.g. by the Python interpreter's exit): no new generation starts".into(),
            });
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        list.push((id, cancel.clone()));
        Ok(Running(id))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        active().retain(|(id, _)| *id != self.0);
        ACTIVE_DONE.notify_all();
    }
}

/// Cancel every generation in progress and wait up to `timeout_ms` for them to end; later
/// generations are refused. Returns how many were still running at the timeout (0: all ended).
/// The Python package calls it at interpreter exit: a generation left running on a daemon
/// thread would otherwise call its listener while the interpreter is being torn down.
#[uniffi::export]
pub fn shutdown_generations(timeout_ms: u32) -> u32 {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    let mut list = active();
    for (_, c) in list.iter() {
        c.cancel();
    }
    while !list.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        list = ACTIVE_DONE
            .wait_timeout(list, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    u32::try_from(list.len()).unwrap_or(u32::MAX)
}

/// Facts about a loaded model.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ModelInfoRecord {
    /// The folder.
    pub folder: String,
    /// Architecture.
    pub architecture: String,
    /// Layers.
    pub layers: u32,
    /// Vocabulary.
    pub vocab_size: u32,
    /// KV cache capacity.
    pub max_context: u32,
    /// KV bytes per session.
    pub kv_cache_bytes: u64,
    /// Graph size.
    pub weights_bytes: u64,
    /// Providers that run the graph.
    pub execution_providers: Vec<String>,
    /// Largest trained block size.
    pub max_block_size: u32,
    /// Recommended gammas.
    pub gamma_low: f64,
    /// Recommended gammas.
    pub gamma_high: f64,
    /// The whole info as JSON (the same as `setblock info --json`).
    pub json: String,
}

/// A loaded model, shared by any number of sessions.
#[derive(uniffi::Object)]
pub struct SbModel {
    pub(crate) inner: Arc<Model>,
}

/// Load options as the runtime takes them (shared with the C ABI).
pub fn load_options(
    max_context: Option<u32>,
    threads: Option<u32>,
    eps: &[String],
    lib: Option<String>,
) -> Result<LoadOptions, SetblockError> {
    Ok(LoadOptions {
        max_context: max_context.map(|v| v as usize),
        threads: threads.map(|v| v as usize),
        execution_providers: eps
            .iter()
            .map(|e| ExecutionProvider::parse(e))
            .collect::<Result<_, _>>()?,
        ort_library: lib.map(Into::into),
    })
}

#[uniffi::export]
impl SbModel {
    /// Load and validate a model folder.
    #[uniffi::constructor]
    pub fn load(config: LoadConfig) -> Result<Arc<Self>, SetblockError> {
        let opts = load_options(
            config.max_context,
            config.threads,
            &config.execution_providers,
            config.ort_library,
        )?;
        Ok(Arc::new(SbModel {
            inner: Arc::new(Model::load(&config.model_dir, &opts)?),
        }))
    }

    /// Facts and the memory budget.
    pub fn info(&self) -> ModelInfoRecord {
        let i = self.inner.info();
        ModelInfoRecord {
            folder: i.folder.display().to_string(),
            architecture: i.architecture.clone(),
            layers: i.layers as u32,
            vocab_size: i.vocab_size as u32,
            max_context: i.max_context as u32,
            kv_cache_bytes: i.kv_cache_bytes as u64,
            weights_bytes: i.weights_bytes,
            execution_providers: i.execution_providers.clone(),
            max_block_size: i.block_sizes.1 as u32,
            gamma_low: i.gamma.0,
            gamma_high: i.gamma.1,
            json: serde_json::to_string(&i).unwrap_or_default(),
        }
    }
}

/// A conversation. `generate` blocks; `generate_async` is a Kotlin `suspend` / Swift `async`
/// function whose cancellation cancels the generation.
#[derive(uniffi::Object)]
pub struct SbSession {
    inner: Mutex<Session>,
    cancel: setblock::CancelHandle,
    gamma_low: f64,
}

/// Run `f` on the session, or say Busy when another thread is generating.
fn with_session<T>(
    s: &Mutex<Session>,
    f: impl FnOnce(&mut Session) -> Result<T, SetblockError>,
) -> Result<T, SetblockError> {
    let mut guard = match s.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return Err(setblock::Error::Busy.into()),
    };
    f(&mut guard)
}

impl SbSession {
    /// The blocking generation with a Rust callback (shared by the uniffi and C faces).
    pub fn generate_with(
        &self,
        prompt: &str,
        config: &GenerateConfig,
        on: &mut dyn FnMut(&Event),
    ) -> Result<setblock::Output, SetblockError> {
        let opts = GenerateOptions::from(config);
        with_session(&self.inner, |s| Ok(s.generate(prompt, &opts, |e| on(e))?))
    }

    /// The model's recommended low gamma (the default entropy budget).
    pub fn gamma_low(&self) -> f64 {
        self.gamma_low
    }

    /// The cancel handle (usable from any thread without the session lock).
    pub fn cancel_handle(&self) -> &setblock::CancelHandle {
        &self.cancel
    }
}

#[uniffi::export]
impl SbSession {
    /// A new conversation on `model` (its own KV cache).
    #[uniffi::constructor]
    pub fn new(model: Arc<SbModel>) -> Result<Arc<Self>, SetblockError> {
        let session = Session::new(model.inner.clone())?;
        let cancel = session.cancel_handle();
        Ok(Arc::new(SbSession {
            inner: Mutex::new(session),
            cancel,
            gamma_low: model.inner.manifest.gamma.low,
        }))
    }

    /// Generate, streaming events to `listener` (blocking).
    pub fn generate(
        &self,
        prompt: String,
        config: GenerateConfig,
        listener: Option<Arc<dyn GenerationListener>>,
    ) -> Result<GenerationResult, SetblockError> {
        let running = Running::start(&self.cancel)?;
        let mut failure: Option<String> = None;
        let out = self.generate_with(&prompt, &config, &mut |e| {
            if let (Some(l), None) = (&listener, &failure) {
                if let Err(err) = l.on_event(e.into()) {
                    failure = Some(format!(
                        "the listener raised an error, so the generation was cancelled: {err}"
                    ));
                    self.cancel.cancel();
                }
            }
        });
        // The listener is a foreign object: releasing it calls into the host (Python takes its
        // GIL). That must happen while this generation still counts as running, or a host
        // shutting down (`shutdown_generations` at interpreter exit) could tear down between the
        // two and kill this thread inside Rust frames (SIGABRT, "exception not rethrown").
        drop(listener);
        drop(running);
        if let Some(message) = failure {
            return Err(SetblockError::Listener { message });
        }
        let out = out?;
        Ok(GenerationResult {
            text: out.text,
            tokens: out.tokens,
            stats: (&out.stats).into(),
        })
    }

    /// Generate on a background thread; dropping (cancelling) the future cancels the generation.
    pub async fn generate_async(
        self: Arc<Self>,
        prompt: String,
        config: GenerateConfig,
        listener: Option<Arc<dyn GenerationListener>>,
    ) -> Result<GenerationResult, SetblockError> {
        let slot = Arc::new(Mutex::new(Shared {
            result: None,
            waker: None,
        }));
        let mut guard = CancelOnDrop(Some(self.cancel.clone()));
        let worker = slot.clone();
        std::thread::spawn(move || {
            // waking the future calls into the host (its event loop): counted as running until
            // then, like `generate`'s listener (None when shutting down: `generate` says so)
            let running = Running::start(&self.cancel).ok();
            let r = self.generate(prompt, config, listener);
            let mut s = worker.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(r);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            drop(s);
            drop(running);
        });
        let r = Join(slot).await;
        guard.0 = None; // finished: nothing to cancel
        r
    }

    /// Cancel the generation in progress (from any thread; reaches a forward in flight).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Forget the conversation. Busy while a generation runs.
    pub fn reset(&self) -> Result<(), SetblockError> {
        with_session(&self.inner, |s| {
            s.reset();
            Ok(())
        })
    }
}

struct Shared {
    result: Option<Result<GenerationResult, SetblockError>>,
    waker: Option<Waker>,
}

struct Join(Arc<Mutex<Shared>>);

impl Future for Join {
    type Output = Result<GenerationResult, SetblockError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Cancels the generation when the async call is dropped before it finished.
struct CancelOnDrop(Option<setblock::CancelHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}
