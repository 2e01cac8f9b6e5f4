//! # setblock
//!
//! Set Block Decoding (SBD) language models on edge devices: ONNX Runtime runs the graph, this
//! crate owns the exact KV cache, the block loop, the EB-Sampler, tokenization and streaming.
//!
//! The path of a prompt: text -> tokenizer ([`Model`]) -> prefill -> block loop ([`mask`],
//! forward, [`select`], [`sample`], commit to [`kv_cache`]) -> [`Event`]s ([`stream`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use setblock::{GenerateOptions, LoadOptions, Model, Session, Event};
//!
//! let model = Arc::new(Model::load("models/demo", &LoadOptions::default())?);
//! let mut session = Session::new(model)?;
//! let out = session.generate("sort 42 17 88 17 30 61", &GenerateOptions::default(), |e| {
//!     if let Event::Block { text, .. } = e {
//!         print!("{text}");
//!     }
//! })?;
//! println!("\n{} tokens in {} forwards", out.stats.generated_tokens, out.stats.forward_passes);
//! # Ok::<(), setblock::Error>(())
//! ```
#![warn(missing_docs)]

pub mod chat;
pub mod decode;
pub mod error;
mod files;
pub mod grammar;
pub mod kv_cache;
pub mod manifest;
pub mod mask;
pub mod model;
pub mod ort_env;
pub mod policy;
pub mod sample;
pub mod select;
#[cfg(feature = "serve")]
pub mod serve;
pub mod session;
pub mod stream;

pub use chat::Message;
pub use decode::Mode;
pub use error::{Error, Result};
pub use grammar::Constraint;
pub use manifest::{Manifest, QuantizationOptions};
pub use model::{LoadOptions, Model, ModelInfo};
pub use ort_env::ExecutionProvider;
pub use policy::CostCurve;
pub use sample::Sampling;
pub use select::Selection;
pub use session::{CancelHandle, GenerateOptions, Output, Session, VERIFIED_GAMMA};
pub use stream::{Event, Stats, StopReason};
