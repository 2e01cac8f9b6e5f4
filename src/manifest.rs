//! The model folder's manifest (`setblock.json`, docs/model-format.md): schema and validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{self, IfMissing};

/// The manifest format version this runtime reads.
pub const FORMAT_VERSION: u32 = 1;

/// Bounds on the manifest's sizes, checked before anything is allocated from them (the largest
/// open models are well inside them; a value beyond one is a corrupt or hostile manifest).
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 4096;
const MAX_HIDDEN: usize = 1 << 17;
const MAX_VOCAB: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 24;
const MAX_BLOCK: usize = 1024;

/// The inclusive range of block sizes the model was trained with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest trained block size.
    pub min: usize,
    /// Largest trained block size.
    pub max: usize,
}

/// The recommended EB-Sampler entropy budgets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Gammas {
    /// Quality-first budget.
    pub low: f64,
    /// Speed-first budget.
    pub high: f64,
}

/// Input and output names of the graph (`%d` stands for the layer index).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IoNames {
    /// int64 `[batch, seq]`.
    pub input_ids: String,
    /// int64 `[batch, seq]`.
    pub position_ids: String,
    /// float32 additive `[batch, 1, seq, past + seq]`.
    pub attention_mask: String,
    /// Optional int64 `[rows]`: the positions of this forward whose logits are computed (the
    /// runtime passes only the ones it reads). Absent in graphs exported before it existed, which
    /// compute every position's logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_index: Option<String>,
    /// `[batch, past, kv_heads, head_dim]`.
    pub past_key: String,
    /// `[batch, past, kv_heads, head_dim]`.
    pub past_value: String,
    /// `[batch, seq, vocab]`, or `[batch, rows, vocab]` with `logits_index`.
    pub logits: String,
    /// `[batch, seq, kv_heads, head_dim]`: this forward's positions only.
    pub present_key: String,
    /// `[batch, seq, kv_heads, head_dim]`: this forward's positions only.
    pub present_value: String,
}

impl IoNames {
    /// Replace `%d` with the layer index.
    pub fn layer(pattern: &str, layer: usize) -> String {
        pattern.replace("%d", &layer.to_string())
    }
}

/// File names inside the folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Files {
    /// The ONNX graph.
    pub model: String,
    /// The graph's external weights file, when its tensors are stored beside it (the exporter's
    /// default: ONNX Runtime maps them instead of copying them into the heap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// The Hugging Face `tokenizer.json`.
    pub tokenizer: String,
}

/// `setblock.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The Hugging Face architecture it was exported from.
    pub architecture: String,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Rows of the embedding / columns of the logits.
    pub vocab_size: usize,
    /// The mask token `m` of SBD.
    pub mask_token_id: u32,
    /// Prepended to raw prompts when set.
    pub bos_token_id: Option<u32>,
    /// Any of these ends a generation.
    pub eos_token_ids: Vec<u32>,
    /// Padding id (unused by batch-1 decoding).
    pub pad_token_id: Option<u32>,
    /// Positions the model was trained for.
    pub max_positions: usize,
    /// Block sizes the model was trained with.
    pub block_sizes: BlockSizes,
    /// Recommended gamma values.
    pub gamma: Gammas,
    /// The block size chosen for this model (on held-out data); default min(8, block_sizes.max).
    #[serde(default)]
    pub default_block_size: Option<usize>,
    /// Weight dtype of the export.
    pub dtype: String,
    /// `none`, `int8` or `int4`.
    #[serde(default = "none")]
    pub quantization: String,
    /// How the weights were quantized (`quantization_options`; absent in folders exported before
    /// it was recorded, and for float weights).
    #[serde(default)]
    pub quantization_options: Option<QuantizationOptions>,
    /// `sequence-major` (past/presents `[batch, seq, kv_heads, head_dim]`) or
    /// `sequence-major-packed` (`[batch, seq, kv_heads * head_dim]`, the same memory).
    pub kv_layout: String,
    /// Graph I/O names.
    pub io: IoNames,
    /// File names.
    pub files: Files,
    /// Free-form: base model, data, steps, dates.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// How an export quantized its weights, as the exporter records it. Informational: ONNX Runtime
/// reads the quantized operators' own attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationOptions {
    /// `MatMulNBits` (int4, and int8 by blocks) or `quantize_dynamic` (int8 per tensor).
    pub method: String,
    /// Bits per weight (MatMulNBits: 4 or 8).
    #[serde(default)]
    pub bits: Option<u32>,
    /// Weights per quantization scale (MatMulNBits).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Symmetric quantization (no zero points).
    #[serde(default)]
    pub symmetric: Option<bool>,
    /// MatMulNBits' compute type: 0 the weights' float type, 1 fp32, 2 fp16, 3 bf16, 4 int8
    /// activations (the fastest on CPUs).
    #[serde(default)]
    pub accuracy_level: Option<u32>,
    /// How the output head was stored (`int4` / `int8`: a head tied to the embedding quantized too;
    /// absent in folders exported before 2026-12-06, whose tied head stayed float32).
    #[serde(default)]
    pub head: Option<String>,
    /// How the input embedding was stored (`int4` / `int8`: read from the tied head's weights by
    /// `GatherBlockQuantized`; absent where it stayed float32, as before 2026-12-06).
    #[serde(default)]
    pub embedding: Option<String>,
}

impl std::fmt::Display for QuantizationOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.method)?;
        if let Some(b) = self.bits {
            write!(f, ", {b}-bit")?;
        }
        if let Some(b) = self.block_size {
            write!(f, ", block {b}")?;
        }
        if self.symmetric == Some(true) {
            f.write_str(", symmetric")?;
        }
        if let Some(a) = self.accuracy_level {
            write!(f, ", accuracy level {a}")?;
        }
        if let Some(h) = &self.head {
            write!(f, ", head {h}")?;
        }
        if let Some(e) = &self.embedding {
            write!(f, ", embedding {e}")?;
        }
        Ok(())
    }
}

/// `kv_layout` of graphs whose past/presents are `[batch, seq, kv_heads, head_dim]`.
pub const KV_SEQUENCE_MAJOR: &str = "sequence-major";
/// `kv_layout` of graphs whose past/presents are `[batch, seq, kv_heads * head_dim]`.
pub const KV_SEQUENCE_MAJOR_PACKED: &str = "sequence-major-packed";
/// `kv_layout` of graphs (`export --fused-attention`) whose past and present are one
/// `[batch, kv_heads, capacity, head_dim]` buffer per layer, written in place by the graph.
pub const KV_HEAD_MAJOR_SHARED: &str = "head-major-shared";

fn none() -> String {
    "none".into()
}

impl Manifest {
    /// True when the graph's past/presents are rank 3, `[batch, seq, kv_heads * head_dim]`.
    pub fn kv_packed(&self) -> bool {
        self.kv_layout == KV_SEQUENCE_MAJOR_PACKED
    }

    /// True when the graph reads its past from, and writes its K/V into, the cache's own
    /// head-major buffers (`head-major-shared`).
    pub fn kv_in_place(&self) -> bool {
        self.kv_layout == KV_HEAD_MAJOR_SHARED
    }

    /// Read and validate `dir/setblock.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        if !dir.is_dir() {
            if dir.exists() {
                return Err(Error::ModelFile {
                    path: dir.to_path_buf(),
                    what: "model folder",
                    problem: "is a file, not a folder: pass the folder that holds setblock.json"
                        .into(),
                });
            }
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "model folder",
                hint: "pass --model / LoadOptions with a folder made by `python -m setblock_export export`",
            });
        }
        let path = dir.join("setblock.json");
        let text = files::read_text(
            &path,
            "the manifest setblock.json",
            IfMissing::Fail(
                "export the model with `python -m setblock_export export`, which writes it",
            ),
        )?
        .unwrap_or_default();
        Manifest::parse(&text, &path)
    }

    /// Parse and validate a manifest's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let path = path.to_path_buf();
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        if let Some(v) = value.get("format_version").and_then(|v| v.as_u64()) {
            if v != u64::from(FORMAT_VERSION) {
                return Err(Error::UnsupportedFormat {
                    path,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                    supported: FORMAT_VERSION,
                });
            }
        }
        let m: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            Error::Manifest {
                path: path.clone(),
                message: if field == "." {
                    inner.to_string()
                } else {
                    format!("field {field}: {inner}")
                },
            }
        })?;
        m.validate(&path)?;
        Ok(m)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        if self.num_layers == 0
            || self.num_kv_heads == 0
            || self.head_dim == 0
            || self.vocab_size == 0
        {
            return Err(bad(
                "num_layers, num_kv_heads, head_dim and vocab_size must be positive".into(),
            ));
        }
        for (field, value, limit) in [
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_heads", self.num_heads, MAX_HEADS),
            ("num_kv_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_positions", self.max_positions, MAX_POSITIONS),
            ("block_sizes.max", self.block_sizes.max, MAX_BLOCK),
        ] {
            if value > limit {
                return Err(bad(format!(
                    "{field} {value} is beyond what this runtime accepts ({limit}); the manifest is corrupt or not from setblock_export"
                )));
            }
        }
        for (field, g) in [
            ("gamma.low", self.gamma.low),
            ("gamma.high", self.gamma.high),
        ] {
            if !g.is_finite() || g < 0.0 {
                return Err(bad(format!(
                    "{field} {g} must be a finite number >= 0 (the default EB-Sampler entropy budget)"
                )));
            }
        }
        for (field, name) in [
            ("files.model", Some(&self.files.model)),
            ("files.weights", self.files.weights.as_ref()),
            ("files.tokenizer", Some(&self.files.tokenizer)),
        ] {
            if let Some(name) = name {
                if !files::inside_folder(name) {
                    return Err(bad(format!(
                        "{field} {name:?} must name a file inside the model folder (a relative path without ..)"
                    )));
                }
            }
        }
        if self.mask_token_id as usize >= self.vocab_size {
            return Err(bad(format!(
                "mask_token_id {} is outside the vocabulary (vocab_size {})",
                self.mask_token_id, self.vocab_size
            )));
        }
        if self.eos_token_ids.is_empty() {
            return Err(bad(
                "eos_token_ids is empty: a generation could never end at EOS".into(),
            ));
        }
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id as usize >= self.vocab_size {
                return Err(bad(format!(
                    "token id {id} (bos/eos) is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                )));
            }
        }
        if self.eos_token_ids.contains(&self.mask_token_id) {
            return Err(bad(format!(
                "mask_token_id {} is also an EOS id",
                self.mask_token_id
            )));
        }
        if self.block_sizes.min < 1 || self.block_sizes.min > self.block_sizes.max {
            return Err(bad(format!(
                "block_sizes {{min: {}, max: {}}}: need 1 <= min <= max",
                self.block_sizes.min, self.block_sizes.max
            )));
        }
        if let Some(k) = self.default_block_size {
            if k < 1 || k > self.block_sizes.max {
                return Err(bad(format!(
                    "default_block_size {k} is outside [1, block_sizes.max {}]",
                    self.block_sizes.max
                )));
            }
        }
        if self.max_positions < 2 {
            return Err(bad(format!(
                "max_positions {} is too small",
                self.max_positions
            )));
        }
        if !matches!(
            self.kv_layout.as_str(),
            KV_SEQUENCE_MAJOR | KV_SEQUENCE_MAJOR_PACKED | KV_HEAD_MAJOR_SHARED
        ) {
            return Err(bad(format!(
                "kv_layout {:?} is not supported; this runtime reads \"{KV_SEQUENCE_MAJOR}\" ([batch, past, kv_heads, head_dim]), \"{KV_SEQUENCE_MAJOR_PACKED}\" ([batch, past, kv_heads * head_dim]) or \"{KV_HEAD_MAJOR_SHARED}\" ([batch, kv_heads, capacity, head_dim], written in place)",
                self.kv_layout
            )));
        }
        for (name, p) in [
            ("past_key", &self.io.past_key),
            ("past_value", &self.io.past_value),
            ("present_key", &self.io.present_key),
            ("present_value", &self.io.present_value),
        ] {
            if !p.contains("%d") {
                return Err(bad(format!(
                    "io.{name} {p:?} must contain %d (the layer index)"
                )));
            }
        }
        Ok(())
    }

    /// The block size used when a generation does not name one.
    pub fn block_size(&self) -> usize {
        self.default_block_size
            .unwrap_or(8.min(self.block_sizes.max))
    }

    /// Bytes of K and V for one cached position across all layers (float32).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }

    /// The folder-relative path of a file.
    pub fn file(dir: &Path, name: &str) -> PathBuf {
        dir.join(name)
    }
}
