//! The OpenAI wire format the server speaks: request bodies (with setblock's `setblock`
//! extension), response bodies, and errors in OpenAI's `{"error": {...}}` shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::stream::StopReason;
use crate::Error;

/// An API error: HTTP status, message, and the request field it is about.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and which knob fixes it.
    pub message: String,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<String>,
    /// OpenAI's `code` (e.g. `invalid_api_key`, `model_not_found`).
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.into()),
            code: None,
            retry_after: None,
        }
    }

    /// Any status, no field.
    pub fn status(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The JSON body, as OpenAI sends it (also used inside a stream).
    pub fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }

    /// A runtime error of a generation: options and context limits are the client's (400).
    pub fn from_runtime(e: Error) -> Self {
        match &e {
            Error::InvalidOption { option, .. } => {
                let param = match *option {
                    "max_new_tokens" => "max_tokens",
                    "block_size" => "setblock.block_size",
                    "gamma" | "tau" | "selection" => "setblock.gamma",
                    "verify" => "setblock.verify",
                    o => o,
                };
                ApiError::bad(param, e.to_string())
            }
            Error::ContextOverflow { .. } => ApiError::bad("max_tokens", e.to_string()),
            Error::Template(_) => ApiError::bad("messages", e.to_string()),
            Error::Constraint { .. } => {
                ApiError::bad("response_format", format!("response_format: {e}"))
            }
            _ => ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Parse a JSON body into `T`; an error names the field path (`messages[0].role`).
pub fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::bad(
            &param,
            format!("invalid request body at `{param}`: {}", e.inner()),
        )
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to 4 stop strings.
    Many(Vec<String>),
}

/// setblock's extension fields: how to decode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// `sbd`, `ntp` or `auto` (default `auto`).
    pub mode: Option<String>,
    /// SBD block size (default: the model's).
    pub block_size: Option<usize>,
    /// EB-Sampler entropy budget (default: the model's low gamma).
    pub gamma: Option<f64>,
    /// Check every drafted token against the model's NTP choice before it is sent (default
    /// false; with it, `gamma` defaults to infinity).
    pub verify: Option<bool>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share.
#[derive(Debug, Deserialize)]
pub struct Common {
    /// The model id (`GET /v1/models`); optional.
    pub model: Option<String>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<usize>,
    /// Newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<usize>,
    /// 0 = greedy (the default here, unlike OpenAI's 1).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// RNG seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// Choices (only 1).
    pub n: Option<usize>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`.
    pub response_format: Option<Value>,
    /// SBD settings.
    pub setblock: Option<Extension>,
}

/// One chat message. `content` may be a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (treated as system), `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: Value,
}

/// `POST /v1/chat/completions`'s own field (the rest is [`Common`], parsed from the same body:
/// `#[serde(flatten)]` would lose the path of a bad field).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation; the last message is the user's.
    pub messages: Vec<ChatMessage>,
}

/// `POST /v1/completions`'s own field.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The raw prompt (no chat template).
    pub prompt: Value,
}

/// `usage`, with setblock's forward count.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (EOS included).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Forward passes of the generation, prefill included.
    pub forward_passes: usize,
    /// completion_tokens / forward_passes.
    pub tokens_per_forward: f64,
}

/// OpenAI's `finish_reason` for a stop reason.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::StopString | StopReason::Grammar => "stop",
        StopReason::MaxTokens => "length",
        StopReason::Cancelled => "cancelled",
    }
}
