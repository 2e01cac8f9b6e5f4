//! `setblock serve`: an OpenAI-compatible local HTTP server over the public API ([`Model`],
//! [`Session`]), for devices where apps talk HTTP to a local model (as to llama.cpp's
//! `llama-server` or Ollama).
//!
//! - `POST /v1/chat/completions` (messages through the model's chat template; `stream` sends
//!   server-sent events and a closing `data: [DONE]`), `POST /v1/completions` (raw prompt),
//!   `GET /v1/models`, `GET /health` (503 while the model loads), `GET /metrics` (Prometheus).
//! - Up to `parallel` generations at once over one shared model, each on its own [`Session`]
//!   (kept between requests, so a client resending its conversation re-runs only the new part);
//!   up to `queue` requests wait, beyond that a 429 with `Retry-After`.
//! - A client that disconnects cancels its generation (within one block).
//! - Loopback by default; `api_key` is checked in constant time; bodies are bounded.

mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::chat::Message;
use crate::session::{CancelHandle, GenerateOptions};
use crate::stream::{Event, StopReason};
use crate::{Constraint, LoadOptions, Mode, Model, Sampling, Selection, Session};
pub use wire::ApiError;
use wire::{finish_reason, parse, ChatRequest, Common, CompletionRequest, Stop, Usage};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model folder.
    pub model: PathBuf,
    /// How to load it.
    pub load: LoadOptions,
    /// Address to bind (default loopback: exposing a model to a network is a decision).
    pub addr: SocketAddr,
    /// Bearer token clients must send (`Authorization: Bearer KEY`); `None` = no check.
    pub api_key: Option<String>,
    /// Generations at once (>= 1).
    pub parallel: usize,
    /// Requests that may wait for a free slot; beyond that, 429.
    pub queue: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Default and upper bound of `max_tokens`.
    pub max_tokens: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model: PathBuf::from("models/demo"),
            load: LoadOptions::default(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            parallel: 1,
            queue: 16,
            max_body_bytes: 1 << 20,
            max_tokens: 256,
        }
    }
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    forwards: AtomicU64,
    ttft_us: AtomicU64,
    generations: AtomicU64,
    waiting: AtomicUsize,
}

struct App {
    cfg: ServeConfig,
    id: String,
    model: OnceLock<Arc<Model>>,
    load_error: OnceLock<String>,
    sessions: Mutex<Vec<Session>>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    next_id: AtomicU64,
}

/// Cancels its request's generation when dropped before that generation finished (the client
/// went away). The session goes back to the pool only after `finished` is set under the same
/// lock, so a late drop can never cancel the next request's generation on that session.
struct CancelOnDrop {
    handle: CancelHandle,
    finished: Arc<Mutex<bool>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Ok(finished) = self.finished.lock() {
            if !*finished {
                self.handle.cancel(); // the lock is held: the worker cannot finish meanwhile
            }
        }
    }
}

/// One request, resolved: what to render and how to decode.
struct Job {
    history: Option<Vec<Message>>,
    prompt: String,
    opts: GenerateOptions,
    stream: bool,
    include_usage: bool,
    chat: bool,
}

/// What a generation sends to its request: a ready SSE data payload, or an error.
enum Msg {
    Data(String),
    Error(ApiError),
}

/// Run the server until Ctrl-C / SIGTERM. Binds first, then loads the model (`/health` is 503
/// meanwhile); a model that fails to load ends the server with its error.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    if cfg.parallel == 0 {
        anyhow::bail!("--parallel must be >= 1 (generations at once)");
    }
    if cfg.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be >= 1");
    }
    let id = cfg
        .model
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "setblock".into());
    let app = Arc::new(App {
        slots: Arc::new(Semaphore::new(cfg.parallel)),
        cfg,
        id,
        model: OnceLock::new(),
        load_error: OnceLock::new(),
        sessions: Mutex::new(Vec::new()),
        metrics: Metrics::default(),
        next_id: AtomicU64::new(1),
    });
    let listener = tokio::net::TcpListener::bind(app.cfg.addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} ({e}); pick another --port or --host",
                app.cfg.addr
            )
        })?;
    eprintln!(
        "setblock serve: listening on http://{} (model {} loading)",
        listener.local_addr()?,
        app.cfg.model.display()
    );
    let loader = app.clone();
    let loading = tokio::task::spawn_blocking(move || {
        match Model::load(&loader.cfg.model, &loader.cfg.load) {
            Ok(m) => {
                let _ = loader.model.set(Arc::new(m));
                eprintln!("setblock serve: model {} ready", loader.id);
                Ok(())
            }
            Err(e) => {
                let _ = loader.load_error.set(e.to_string());
                Err(e)
            }
        }
    });
    let router = router(app);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown());
    let failed_load = async {
        match loading.await {
            Ok(Ok(())) => std::future::pending::<anyhow::Result<()>>().await,
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the model failed to load")),
            Err(e) => Err(anyhow::anyhow!("the model loader stopped: {e}")),
        }
    };
    tokio::select! {
        r = server => r?,
        r = failed_load => r?,
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async {
            ApiError::status(StatusCode::NOT_FOUND, "no such endpoint: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics")
        })
        .with_state(app)
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.cfg.api_key {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = sent.as_bytes().ct_eq(key.as_bytes()).into();
        if !ok {
            let mut e = ApiError::status(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer KEY` with the server's --api-key",
            );
            e.code = Some("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match (app.model.get(), app.load_error.get()) {
        (Some(_), _) => Json(json!({"status": "ok", "model": app.id})).into_response(),
        (None, Some(e)) => ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model failed to load: {e}"),
        )
        .into_response(),
        (None, None) => {
            let mut e = ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "model is loading");
            e.retry_after = Some(1);
            e.into_response()
        }
    }
}

fn loaded(app: &App) -> Result<Arc<Model>, ApiError> {
    app.model.get().cloned().ok_or_else(|| {
        let mut e = ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "model is loading; poll GET /health",
        );
        e.retry_after = Some(1);
        e
    })
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let created = now();
    Json(json!({"object": "list", "data": [
        {"id": app.id, "object": "model", "created": created, "owned_by": "setblock"}
    ]}))
    .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = &app.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (ct, fw) = (g(&m.completion_tokens), g(&m.forwards));
    let mut s = String::new();
    let mut line = |name: &str, kind: &str, help: &str, v: String| {
        s.push_str(&format!(
            "# HELP setblock_{name} {help}\n# TYPE setblock_{name} {kind}\nsetblock_{name} {v}\n"
        ));
    };
    line(
        "requests_total",
        "counter",
        "Generation requests received.",
        g(&m.requests).to_string(),
    );
    line(
        "requests_rejected_total",
        "counter",
        "Requests refused with 429 (queue full).",
        g(&m.rejected).to_string(),
    );
    line(
        "requests_failed_total",
        "counter",
        "Requests answered with an error.",
        g(&m.errors).to_string(),
    );
    line(
        "requests_cancelled_total",
        "counter",
        "Generations cancelled by a client disconnect.",
        g(&m.cancelled).to_string(),
    );
    line(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens of finished generations.",
        g(&m.prompt_tokens).to_string(),
    );
    line(
        "completion_tokens_total",
        "counter",
        "Tokens generated.",
        ct.to_string(),
    );
    line(
        "forward_passes_total",
        "counter",
        "Model forwards, prefill included.",
        fw.to_string(),
    );
    line(
        "tokens_per_forward",
        "gauge",
        "completion_tokens_total / forward_passes_total.",
        format!("{:.4}", if fw == 0 { 0.0 } else { ct as f64 / fw as f64 }),
    );
    line(
        "time_to_first_token_seconds_sum",
        "counter",
        "Sum of times to first token.",
        format!("{:.6}", g(&m.ttft_us) as f64 / 1e6),
    );
    line(
        "time_to_first_token_seconds_count",
        "counter",
        "Generations measured.",
        g(&m.generations).to_string(),
    );
    line(
        "requests_waiting",
        "gauge",
        "Requests waiting for a slot.",
        m.waiting.load(Ordering::Relaxed).to_string(),
    );
    line(
        "slots_busy",
        "gauge",
        "Generations running.",
        (app.cfg.parallel - app.slots.available_permits()).to_string(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

async fn body_bytes(app: &App, body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, app.cfg.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body over {} bytes (the server's --max-body-bytes)",
                    app.cfg.max_body_bytes
                ),
            )
        })
}

async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = async {
        let bytes = body_bytes(&app, body).await?;
        let req: ChatRequest = parse(&bytes)?;
        let common: Common = parse(&bytes)?;
        let model = loaded(&app)?;
        let job = chat_job(&app, &model, req, &common)?;
        serve_job(app.clone(), model, job).await
    }
    .await;
    r.unwrap_or_else(|e| failed(&app, e))
}

async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = async {
        let bytes = body_bytes(&app, body).await?;
        let req: CompletionRequest = parse(&bytes)?;
        let common: Common = parse(&bytes)?;
        let model = loaded(&app)?;
        let prompt = match req.prompt {
            Value::String(s) => s,
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            _ => {
                return Err(ApiError::bad(
                    "prompt",
                    "prompt must be a string (or a list of one string)",
                ))
            }
        };
        let opts = options(&app, &model, &common)?;
        let job = Job {
            history: None,
            prompt,
            opts: GenerateOptions {
                chat_template: Some(false),
                ..opts
            },
            stream: common.stream,
            include_usage: include_usage(&common),
            chat: false,
        };
        serve_job(app.clone(), model, job).await
    }
    .await;
    r.unwrap_or_else(|e| failed(&app, e))
}

fn failed(app: &App, e: ApiError) -> Response {
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        app.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    } else {
        app.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    e.into_response()
}

fn include_usage(c: &Common) -> bool {
    c.stream_options.as_ref().is_some_and(|o| o.include_usage)
}

fn text_of(content: &Value, at: usize) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::bad(
                            &format!("messages[{at}].content[{j}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::bad(
            &format!("messages[{at}].content"),
            "content must be a string or a list of text parts",
        )),
    }
}

fn chat_job(app: &App, model: &Model, req: ChatRequest, common: &Common) -> Result<Job, ApiError> {
    if !model.has_chat_template() {
        return Err(ApiError::bad(
            "messages",
            "the model folder has no chat template (tokenizer_config.json chat_template); use /v1/completions with a raw prompt",
        ));
    }
    let mut msgs = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad(
                    &format!("messages[{i}].role"),
                    format!(
                        "role `{other}` is not supported: system, developer, user or assistant"
                    ),
                ))
            }
        };
        msgs.push(Message {
            role: role.into(),
            content: text_of(&m.content, i)?,
        });
    }
    let last = match msgs.pop() {
        Some(m) if m.role == "user" => m,
        Some(_) => {
            return Err(ApiError::bad(
                "messages",
                "the last message must be the user's (the reply is the assistant's)",
            ))
        }
        None => return Err(ApiError::bad("messages", "messages is empty")),
    };
    let opts = options(app, model, common)?;
    Ok(Job {
        history: Some(msgs),
        prompt: last.content,
        opts: GenerateOptions {
            chat_template: Some(true),
            ..opts
        },
        stream: common.stream,
        include_usage: include_usage(common),
        chat: true,
    })
}

fn options(app: &App, model: &Model, c: &Common) -> Result<GenerateOptions, ApiError> {
    if let Some(name) = &c.model {
        if name != &app.id {
            let mut e = ApiError::bad(
                "model",
                format!(
                    "unknown model `{name}`: this server serves `{}` (GET /v1/models)",
                    app.id
                ),
            );
            e.code = Some("model_not_found");
            return Err(e);
        }
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    let constraint = match &c.response_format {
        None => None,
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(Constraint::JsonSchema(r#"{"type": "object"}"#.into())),
            Some("json_schema") => {
                let schema = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "response_format",
                            "response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                        )
                    })?;
                Some(Constraint::JsonSchema(schema.to_string()))
            }
            _ => {
                return Err(ApiError::bad(
                    "response_format",
                    "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
                ))
            }
        },
    };
    let max = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(app.cfg.max_tokens);
    if max == 0 || max > app.cfg.max_tokens {
        return Err(ApiError::bad(
            "max_tokens",
            format!(
                "max_tokens must be in [1, {}] (the server's --max-tokens)",
                app.cfg.max_tokens
            ),
        ));
    }
    let stop = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "stop",
            "stop takes up to 4 non-empty strings",
        ));
    }
    let ext = c.setblock.as_ref();
    let mode = match ext.and_then(|e| e.mode.as_deref()).unwrap_or("auto") {
        "auto" => Mode::Auto,
        "sbd" => Mode::Sbd,
        "ntp" => Mode::Ntp,
        other => {
            return Err(ApiError::bad(
                "setblock.mode",
                format!("mode `{other}`: sbd, ntp or auto"),
            ))
        }
    };
    let verify = ext.and_then(|e| e.verify).unwrap_or(false);
    let gamma = ext.and_then(|e| e.gamma).unwrap_or(if verify {
        crate::VERIFIED_GAMMA
    } else {
        model.manifest.gamma.low
    });
    let defaults = Sampling::default();
    let opts = GenerateOptions {
        mode,
        block_size: ext.and_then(|e| e.block_size),
        selection: Some(Selection::EbEntropy { gamma }),
        sampling: Sampling {
            temperature: c.temperature.unwrap_or(0.0),
            top_p: c.top_p.unwrap_or(1.0),
            seed: c.seed.unwrap_or(defaults.seed),
            ..defaults
        },
        max_new_tokens: max,
        stop,
        chat_template: None,
        constraint,
        forced_tokens: true,
        verify,
    };
    check(&opts, model).map_err(ApiError::from_runtime)?;
    Ok(opts)
}

/// Check `opts` against `model` before queueing (block size, selection, sampling ranges), as
/// [`Session::resolve`] does at generation time.
fn check(opts: &GenerateOptions, model: &Model) -> crate::Result<()> {
    let m = &model.manifest;
    let k = opts.block_size.unwrap_or(m.block_size());
    if k == 0 || k > m.block_sizes.max {
        return Err(crate::Error::InvalidOption {
            option: "block_size",
            value: k.to_string(),
            constraint: format!(
                "must be in [1, {}] (the largest block size the model was trained with)",
                m.block_sizes.max
            ),
        });
    }
    if let Some(s) = opts.selection {
        s.validate()?;
    }
    opts.sampling.validate()
}

/// Wait for a slot (or refuse with 429 when the queue is full).
async fn slot(app: &App) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Ok(p) = app.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    let waiting = app.metrics.waiting.fetch_add(1, Ordering::SeqCst);
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _leave = Leave(&app.metrics.waiting);
    if waiting >= app.cfg.queue {
        let mut e = ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "server busy: {} generations running and {} waiting (the server's --parallel and --queue)",
                app.cfg.parallel, app.cfg.queue
            ),
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    app.slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn serve_job(app: Arc<App>, model: Arc<Model>, job: Job) -> Result<Response, ApiError> {
    let permit = slot(&app).await?;
    let mut session = match app.sessions.lock().ok().and_then(|mut v| v.pop()) {
        Some(s) => s,
        None => Session::new(model).map_err(ApiError::from_runtime)?,
    };
    let finished = Arc::new(Mutex::new(false));
    let guard = CancelOnDrop {
        handle: session.cancel_handle(),
        finished: finished.clone(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let id = format!(
        "{}-{}",
        if job.chat { "chatcmpl" } else { "cmpl" },
        app.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let streaming = job.stream;
    let worker = app.clone();
    let head = id.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let r = generate(&worker, &mut session, &job, &head, &tx);
        if let Ok(mut f) = finished.lock() {
            *f = true;
        }
        if let Ok(mut pool) = worker.sessions.lock() {
            pool.push(session);
        }
        r
    });
    if !streaming {
        // non-streaming: the guard cancels if this future is dropped (client gone)
        let out = task.await.map_err(|e| {
            ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("generation failed: {e}"),
            )
        })??;
        drop(guard);
        return Ok(Json(out).into_response());
    }
    // streaming: answer headers once the prompt is in (errors before that are plain 4xx)
    let first = match rx.recv().await {
        Some(Msg::Data(d)) => d,
        Some(Msg::Error(e)) => return Err(e),
        None => {
            return match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(ApiError::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "generation ended without output",
                )),
            }
        }
    };
    let rest = UnboundedReceiverStream::new(rx);
    let stream = tokio_stream::once(Msg::Data(first))
        .chain(rest)
        .map(move |m| {
            let _keep = &guard; // dropped with the stream: a disconnect cancels the generation
            Ok::<_, Infallible>(match m {
                Msg::Data(d) => SseEvent::default().data(d),
                Msg::Error(e) => SseEvent::default().data(e.body().to_string()),
            })
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Run one generation on `session`; for a streaming job, send chunks through `tx` as they come.
/// Returns the non-streaming response body.
fn generate(
    app: &App,
    session: &mut Session,
    job: &Job,
    id: &str,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Result<Value, ApiError> {
    let created = now();
    let model_id = &app.id;
    let object = if job.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |text: Option<&str>, role: bool, finish: Option<&str>| -> String {
        let choice = if job.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        json!({"id": id, "object": object, "created": created, "model": model_id, "choices": [choice]}).to_string()
    };
    let cancel = session.cancel_handle();
    let mut gone = false;
    let mut send = |m: Msg| {
        if tx.send(m).is_err() && !gone {
            gone = true; // the client disconnected: stop within one block
            cancel.cancel();
        }
    };
    if job.chat {
        session.set_messages(job.history.clone().unwrap_or_default());
    } else {
        session.reset();
    }
    let result = session.generate(&job.prompt, &job.opts, |e| {
        if !job.stream {
            return;
        }
        match e {
            Event::PrefillDone { .. } if job.chat => send(Msg::Data(chunk(Some(""), true, None))),
            Event::PrefillDone { .. } => send(Msg::Data(chunk(Some(""), false, None))),
            Event::Block { text, .. } if !text.is_empty() => {
                send(Msg::Data(chunk(Some(text), false, None)))
            }
            _ => {}
        }
    });
    let out = match result {
        Ok(o) => o,
        Err(e) => {
            let e = ApiError::from_runtime(e);
            if job.stream {
                let _ = tx.send(Msg::Error(e.clone()));
            }
            return Err(e);
        }
    };
    let s = &out.stats;
    let m = &app.metrics;
    let prompt_tokens = session
        .context_tokens()
        .len()
        .saturating_sub(out.tokens.len());
    if s.stop_reason == StopReason::Cancelled {
        m.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    m.prompt_tokens
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    m.completion_tokens
        .fetch_add(s.generated_tokens as u64, Ordering::Relaxed);
    m.forwards
        .fetch_add(s.forward_passes as u64, Ordering::Relaxed);
    m.ttft_us
        .fetch_add((s.time_to_first_token_ms * 1e3) as u64, Ordering::Relaxed);
    m.generations.fetch_add(1, Ordering::Relaxed);
    let usage = Usage {
        prompt_tokens,
        completion_tokens: s.generated_tokens,
        total_tokens: prompt_tokens + s.generated_tokens,
        forward_passes: s.forward_passes,
        tokens_per_forward: s.tokens_per_forward,
    };
    let finish = finish_reason(s.stop_reason);
    if job.stream {
        let _ = tx.send(Msg::Data(chunk(None, false, Some(finish))));
        if job.include_usage {
            let u = json!({"id": id, "object": object, "created": created, "model": model_id, "choices": [], "usage": usage});
            let _ = tx.send(Msg::Data(u.to_string()));
        }
        let _ = tx.send(Msg::Data("[DONE]".into()));
        return Ok(Value::Null);
    }
    let choice = if job.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": finish, "logprobs": null})
    } else {
        json!({"index": 0, "text": out.text, "finish_reason": finish, "logprobs": null})
    };
    Ok(json!({
        "id": id,
        "object": if job.chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": model_id,
        "choices": [choice],
        "usage": usage,
    }))
}
