//! One error enum for the whole runtime. Each message states the constraint that was broken and,
//! where there is one, the option that fixes it.

use std::path::PathBuf;

/// Everything that can go wrong in setblock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model folder (or a file it must hold) is missing.
    #[error("{path}: {what} not found ({hint})")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What it should have been.
        what: &'static str,
        /// How to get one.
        hint: &'static str,
    },
    /// A file of the model folder is there but cannot be used: a directory or a FIFO in its
    /// place, unreadable, a symlink loop, not UTF-8, or a chat template that does not compile.
    #[error("{path}: {what} {problem}")]
    ModelFile {
        /// The file's path.
        path: PathBuf,
        /// What it should have been.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The manifest is not valid JSON of the expected shape, or breaks a rule of the format.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The manifest declares a format version this runtime cannot read.
    #[error("manifest {path}: format_version {found} is not supported by this runtime (supported: {supported}); re-export the model with a matching setblock_export")]
    UnsupportedFormat {
        /// The manifest's path.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this runtime reads.
        supported: u32,
    },
    /// The tokenizer cannot be loaded or disagrees with the model.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The ONNX graph does not match the manifest.
    #[error("graph {path}: {message}")]
    Graph {
        /// The graph's path.
        path: PathBuf,
        /// What does not match.
        message: String,
    },
    /// The ONNX Runtime library cannot be found or loaded.
    #[error("ONNX Runtime library: {0}")]
    Runtime(String),
    /// An execution provider was asked for that this build or this library cannot provide.
    #[error("execution provider {name}: {message}")]
    ExecutionProvider {
        /// The provider's name.
        name: String,
        /// Why it cannot be used.
        message: String,
    },
    /// ONNX Runtime failed while running the graph.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// An option is out of its range.
    #[error("option {option} = {value}: {constraint}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks.
        constraint: String,
    },
    /// The prompt plus the requested generation does not fit the KV cache.
    #[error("context overflow: {context_tokens} tokens in context + max_new_tokens {max_new_tokens} > max_context {max_context}; lower max_new_tokens, shorten the prompt, reset the session, or load the model with a larger max_context (the model allows {model_limit})")]
    ContextOverflow {
        /// Tokens already in the context (history + prompt).
        context_tokens: usize,
        /// Requested new tokens.
        max_new_tokens: usize,
        /// The cache's capacity.
        max_context: usize,
        /// The model's own limit.
        model_limit: usize,
    },
    /// A structured-output constraint (JSON schema, regex, Lark grammar) is invalid, or the
    /// model's vocabulary cannot produce what it requires.
    #[error("constraint ({kind}): {message}")]
    Constraint {
        /// JSON schema, regex or Lark grammar.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// Input that is not valid UTF-8 (from a foreign caller).
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    /// The session is already generating on another thread.
    #[error("the session is busy with another generation; wait for it or cancel it first")]
    Busy,
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}

/// Result with the runtime's error.
pub type Result<T> = std::result::Result<T, Error>;
