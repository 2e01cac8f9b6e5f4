//! `Model` = graph + tokenizer + manifest, loaded once and shared across threads (`Arc<Model>`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, RunOptions, Session, SessionInputValue, SessionOutputs};
use ort::value::{Shape, TensorRef, TensorRefMut};
use ort::AsPointer;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::files::{self, IfMissing};
use crate::grammar;
use crate::kv_cache::{KvCache, KvLayout};
use crate::manifest::{IoNames, Manifest, QuantizationOptions};
use crate::mask;
use crate::ort_env::{self, ExecutionProvider, ProfileShapes};
use crate::policy::{self, CostCurve};

/// Default cap on the KV cache: a model's full context preallocated by default is how peers'
/// users run out of memory.
pub const DEFAULT_MAX_CONTEXT: usize = 2048;
/// Untimed 1-token forwards before the cost curve times NTP (`Probe::medians` adds one more: 4).
const NTP_WARMUP: usize = 3;
/// Timed 1-token forwards of the cost curve's NTP entry (the cheapest shape: many are cheap).
const NTP_REPS: usize = 9;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Positions the KV cache holds (default: min(model limit, 2048)).
    pub max_context: Option<usize>,
    /// Intra-op threads (default: ONNX Runtime's choice).
    pub threads: Option<usize>,
    /// Providers in order of preference (default: CPU).
    pub execution_providers: Vec<ExecutionProvider>,
    /// Explicit path to libonnxruntime (see `ort_env` for the discovery order).
    pub ort_library: Option<PathBuf>,
}

/// What `setblock info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The model folder.
    pub folder: PathBuf,
    /// Exported architecture.
    pub architecture: String,
    /// Decoder layers.
    pub layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The model's position limit.
    pub max_positions: usize,
    /// The KV cache's capacity (positions).
    pub max_context: usize,
    /// KV bytes per session (preallocated).
    pub kv_cache_bytes: usize,
    /// KV bytes per position.
    pub kv_bytes_per_token: usize,
    /// Size of the graph file(s).
    pub weights_bytes: u64,
    /// Providers that run the graph (the last is the CPU fallback for unsupported nodes).
    pub execution_providers: Vec<String>,
    /// Library in use.
    pub ort_library: PathBuf,
    /// Trained block sizes.
    pub block_sizes: (usize, usize),
    /// Recommended gammas (low, high).
    pub gamma: (f64, f64),
    /// Weight quantization of the export.
    pub quantization: String,
    /// How the weights were quantized, where the manifest records it (e.g. int4's accuracy level).
    pub quantization_options: Option<QuantizationOptions>,
    /// The manifest's `kv_layout` (`head-major-shared`: the graph writes the KV cache in place,
    /// `export --fused-attention`).
    pub kv_layout: String,
    /// Whether a chat template is applied by default.
    pub chat_template: bool,
    /// Mask token id.
    pub mask_token_id: u32,
}

/// Reusable buffers of one forward (owned by a session: no per-forward growth once warm).
#[derive(Debug, Default)]
pub struct StepBuffers {
    ids: Vec<i64>,
    pos: Vec<i64>,
    mask: Vec<f32>,
    /// Positions (relative to the forward's first token) whose logits the next forward keeps.
    rows: Vec<i64>,
    /// Logits of the kept rows of the last forward, in the order of `rows` (`rows * vocab`).
    pub logits: Vec<f32>,
    /// Seconds spent inside ONNX Runtime's `run` since the buffers were made (or reset).
    pub run_seconds: f64,
}

impl StepBuffers {
    /// Keep the logits of the last position only (NTP, prefill).
    pub(crate) fn keep_last(&mut self, n: usize) {
        self.rows.clear();
        self.rows.push(n as i64 - 1);
    }

    /// Keep the logits of these positions (relative to the forward's first token), in this order.
    pub(crate) fn keep(&mut self, rows: impl IntoIterator<Item = usize>) {
        self.rows.clear();
        self.rows.extend(rows.into_iter().map(|r| r as i64));
    }
}

/// A filled cache to time forwards on (`Model::probe`); nothing it runs is committed.
pub struct Probe<'a> {
    model: &'a Model,
    cache: KvCache,
    buf: StepBuffers,
    run: RunOptions,
    filler: Vec<u32>,
}

impl Probe<'_> {
    /// Seconds of one forward of `n` tokens keeping the logits of the last `rows`.
    pub fn time(&mut self, n: usize, rows: usize) -> Result<f64> {
        if n == 0 || n > self.filler.len() || rows == 0 || rows > n {
            return Err(Error::InvalidOption {
                option: "tokens / logits rows of a timed forward",
                value: format!("{n} tokens, {rows} rows"),
                constraint: format!(
                    "need 1 <= rows <= tokens <= {} (the size the probe was made for)",
                    self.filler.len()
                ),
            });
        }
        self.buf.keep(n - rows..n);
        let t0 = std::time::Instant::now();
        self.model.forward(
            &mut self.cache,
            &self.filler[..n],
            0,
            &mut self.buf,
            &self.run,
        )?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Median seconds of each `(tokens, rows)` shape: one untimed warm-up each, then `reps`
    /// rounds with the shapes interleaved, so that machine noise hits them alike. `each_round`
    /// runs after every round (progress).
    pub fn medians(
        &mut self,
        shapes: &[(usize, usize)],
        reps: usize,
        mut each_round: impl FnMut(),
    ) -> Result<Vec<f64>> {
        for &(n, r) in shapes {
            self.time(n, r)?;
        }
        let mut times = vec![Vec::with_capacity(reps); shapes.len()];
        for _ in 0..reps {
            for (t, &(n, r)) in times.iter_mut().zip(shapes) {
                t.push(self.time(n, r)?);
            }
            each_round();
        }
        Ok(times.iter_mut().map(|v| median(v)).collect())
    }
}

/// The median of `v` (sorted in place; the upper one of an even count); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A loaded SBD model.
pub struct Model {
    /// The folder it came from.
    pub folder: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    pub(crate) template: Option<ChatTemplate>,
    session: Mutex<Session>,
    past_names: Vec<(String, String)>,
    present_names: Vec<(String, String)>,
    max_context: usize,
    providers: Vec<String>,
    ort_library: PathBuf,
    cost_curve: OnceLock<CostCurve>,
    /// The curve as `auto` generations corrected it (policy.rs), and whether they may.
    learned_curve: Mutex<Option<CostCurve>>,
    cost_learning: AtomicBool,
    grammar_engine: Mutex<Option<Arc<grammar::Engine>>>,
    /// A `head-major-shared` graph's binding of the last cache it ran on (see `forward_in_place`).
    in_place: Mutex<Option<InPlaceBinding>>,
    /// Where the in-place binding's tensors and logits live.
    cpu_memory: MemoryInfo<'static>,
}

/// The binding of one cache's buffers as a `head-major-shared` graph's past and present: kept
/// between forwards (only the token inputs are bound anew), and rebuilt when a forward comes with
/// a cache at other addresses (another session's, or a new one).
struct InPlaceBinding {
    binding: IoBinding,
    /// The cache buffers' addresses (each layer's keys then values) and its capacity.
    buffers: Vec<usize>,
    capacity: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

fn special(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn load_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let cfg_path = dir.join("tokenizer_config.json");
    const CFG: &str = "tokenizer_config.json (the chat template and special tokens)";
    let cfg: serde_json::Value = match files::read_text(&cfg_path, CFG, IfMissing::Skip)? {
        Some(t) => serde_json::from_str(&t).map_err(|e| {
            Error::Tokenizer(format!("{}: not valid JSON: {e}", cfg_path.display()))
        })?,
        None => serde_json::Value::Null,
    };
    let (source, from) = match cfg.get("chat_template") {
        Some(serde_json::Value::String(s)) => (Some(s.clone()), cfg_path),
        Some(serde_json::Value::Array(list)) => (
            list.iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            cfg_path,
        ),
        _ => {
            let path = dir.join("chat_template.jinja");
            (
                files::read_text(&path, "chat_template.jinja", IfMissing::Skip)?,
                path,
            )
        }
    };
    match source {
        Some(src) => ChatTemplate::new(
            src,
            special(cfg.get("bos_token")).unwrap_or_default(),
            special(cfg.get("eos_token")).unwrap_or_default(),
        )
        .map(Some)
        .map_err(|e| Error::ModelFile {
            path: from,
            what: "chat template",
            problem: format!("does not compile: {e}"),
        }),
        None => Ok(None),
    }
}

/// The most intra-op threads a model may be loaded with: a few per core (more only adds
/// contention, and ONNX Runtime allocates per thread).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Model {
    /// A cache filled with `past` positions, ready to time forwards of up to `n` tokens on top.
    pub fn probe(&self, past: usize, n: usize) -> Result<Probe<'_>> {
        if n == 0 || past + n > self.max_context {
            return Err(Error::InvalidOption {
                option: "past + tokens (bench-forward --past, --tokens)",
                value: format!("{past} + {n}"),
                constraint: format!(
                    "tokens >= 1 and the sum must fit max_context {}",
                    self.max_context
                ),
            });
        }
        let run = RunOptions::new()?;
        let mut cache = self.new_cache()?;
        let mut buf = StepBuffers::default();
        let filler: Vec<u32> = (0..past.max(n))
            .map(|i| (3 + i % self.manifest.vocab_size.saturating_sub(3).max(1)) as u32)
            .collect();
        if past > 0 {
            buf.keep_last(past);
            self.forward(&mut cache, &filler[..past], past, &mut buf, &run)?;
        }
        Ok(Probe {
            model: self,
            cache,
            buf,
            run,
            filler,
        })
    }

    /// The device's cost curve for the `auto` policy, measured on first use (a few forwards per
    /// candidate block size, at 128 cached positions or less) and kept with the model.
    pub fn cost_curve(&self) -> Result<CostCurve> {
        if let Some(c) = self.cost_curve.get() {
            return Ok(c.clone());
        }
        let m = &self.manifest;
        let ks = policy::candidates(m.block_sizes.min, m.block_sizes.max);
        let longest = 2 * ks.last().copied().unwrap_or(1);
        let past = 128.min(self.max_context.saturating_sub(longest));
        let mut probe = self.probe(past, longest.min(self.max_context - past))?;
        let shapes: Vec<(usize, usize)> = ks
            .iter()
            .flat_map(|&k| [(2 * k, k), (k, k)])
            .filter(|&(n, _)| n <= probe.filler.len())
            .collect();
        let med = probe.medians(&shapes, 5, || {})?;
        let t = |n: usize, r: usize| shapes.iter().position(|&s| s == (n, r)).map(|i| med[i]);
        // NTP is timed in a run of its own, as a decode runs it: between block forwards a
        // 1-token forward ran slower than in a decode (a 110M int8 model: 4.9-5.9 ms against
        // 3.9-4.1, and NTP then decoded 1.4x faster than this curve predicted).
        for _ in 0..NTP_WARMUP {
            probe.time(1, 1)?;
        }
        let ntp = probe.medians(&[(1, 1)], NTP_REPS, || {})?[0];
        let curve = policy::checked(CostCurve {
            past,
            ntp,
            blocks: ks
                .iter()
                .filter_map(|&k| Some((k, t(2 * k, k)?, t(k, k)?)))
                .collect(),
        })?;
        Ok(self.cost_curve.get_or_init(|| curve).clone())
    }

    /// The curve the next `auto` generation starts from: the measured one as corrected by the
    /// forward times of earlier `auto` generations on this model (policy.rs), or the measured
    /// one when learning is off ([`Model::set_cost_learning`]) or nothing was learned yet.
    pub fn auto_cost_curve(&self) -> Result<CostCurve> {
        let measured = self.cost_curve()?;
        if !self.cost_learning() {
            return Ok(measured);
        }
        let learned = self.learned_curve.lock().unwrap_or_else(|p| p.into_inner());
        Ok(learned.clone().unwrap_or(measured))
    }

    /// Whether `auto` corrects the cost curve from the forward times it observes (default on).
    /// Off, `auto` generations decide from the curve as measured and learn nothing; what was
    /// learned before is kept for when it is turned on again.
    pub fn set_cost_learning(&self, on: bool) {
        self.cost_learning.store(on, Ordering::SeqCst);
    }

    /// The corrected curve `auto` generations have learned so far, if any.
    pub fn learned_cost_curve(&self) -> Option<CostCurve> {
        self.learned_curve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// See [`Model::set_cost_learning`].
    pub fn cost_learning(&self) -> bool {
        self.cost_learning.load(Ordering::SeqCst)
    }

    /// Keep an `auto` generation's corrected curve (entries for its block sizes; a generation
    /// limited to smaller blocks leaves the larger ones as they were).
    pub(crate) fn store_learned_curve(&self, corrected: &CostCurve) {
        if !self.cost_learning() {
            return;
        }
        let Ok(measured) = self.cost_curve() else {
            return;
        };
        let mut learned = self.learned_curve.lock().unwrap_or_else(|p| p.into_inner());
        let base = learned.get_or_insert(measured);
        base.ntp = corrected.ntp;
        for b in base.blocks.iter_mut() {
            if let Some(c) = corrected.blocks.iter().find(|c| c.0 == b.0) {
                *b = *c;
            }
        }
    }

    /// Use this cost curve for the `auto` policy instead of measuring one (e.g. one measured
    /// earlier on the same device and stored by the application). Fails if one is already set.
    pub fn set_cost_curve(&self, curve: CostCurve) -> Result<()> {
        const OPTION: &str = "cost curve (Model::set_cost_curve)";
        let curve = policy::checked(curve).map_err(|_| Error::InvalidOption {
            option: OPTION,
            value: "a time that is not finite or not > 0".into(),
            constraint: "every time of the curve must be a finite number of seconds > 0".into(),
        })?;
        self.cost_curve
            .set(curve)
            .map_err(|_| Error::InvalidOption {
                option: OPTION,
                value: "a second curve".into(),
                constraint: "set it once per loaded model, before the first Mode::Auto generation \
                         (which measures one) or cost_curve() call"
                    .into(),
            })
    }

    /// Load and validate a model folder.
    pub fn load(folder: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        let dir = folder.as_ref().to_path_buf();
        let m = Manifest::load(&dir)?;
        let max_context = opts
            .max_context
            .unwrap_or(m.max_positions.min(DEFAULT_MAX_CONTEXT));
        if max_context < 2 || max_context > m.max_positions {
            return Err(Error::InvalidOption {
                option: "max_context",
                value: max_context.to_string(),
                constraint: format!(
                    "must be in [2, {}] (the model's max_positions)",
                    m.max_positions
                ),
            });
        }
        if let Some(t) = opts.threads {
            if t == 0 || t > max_threads() {
                return Err(Error::InvalidOption {
                    option: "threads",
                    value: t.to_string(),
                    constraint: format!(
                        "must be in [1, {}] (4 per core of this machine); leave it unset for ONNX Runtime's default",
                        max_threads()
                    ),
                });
            }
        }
        let kv_fits = m
            .kv_bytes_per_token()
            .checked_mul(max_context)
            .is_some_and(|b| b <= isize::MAX as usize);
        if !kv_fits {
            return Err(Error::InvalidOption {
                option: "max_context",
                value: max_context.to_string(),
                constraint:
                    "the KV cache for that many positions cannot be addressed; lower max_context"
                        .into(),
            });
        }
        let tok_path = dir.join(&m.files.tokenizer);
        files::check_regular(
            &tok_path,
            "tokenizer",
            IfMissing::Fail(
                "the manifest's files.tokenizer must name a tokenizer.json in the folder",
            ),
        )?;
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let tv = tokenizer.get_vocab_size(true);
        if tv > m.vocab_size {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {tv} tokens but the model's vocabulary (vocab_size) is {}: they come from different models",
                m.vocab_size
            )));
        }
        if tokenizer.id_to_token(m.mask_token_id).is_none() {
            return Err(Error::Tokenizer(format!(
                "mask_token_id {} is not a token of the tokenizer",
                m.mask_token_id
            )));
        }
        let template = load_template(&dir)?;
        let graph = dir.join(&m.files.model);
        files::check_regular(
            &graph,
            "ONNX graph",
            IfMissing::Fail("the manifest's files.model must name the model.onnx in the folder"),
        )?;
        if let Some(w) = &m.files.weights {
            files::check_regular(
                &dir.join(w),
                "external weights of the ONNX graph",
                IfMissing::Fail("copy the whole model folder: files.weights names the file the graph's tensors are stored in"),
            )?;
        }
        let (lib, env) = ort_env::runtime(opts.ort_library.as_deref())?;
        let providers = if opts.execution_providers.is_empty() {
            vec![ExecutionProvider::Cpu]
        } else {
            opts.execution_providers.clone()
        };
        let shapes = ProfileShapes {
            manifest: &m,
            max_context,
            max_block: m.block_sizes.max,
        };
        let (session, used) =
            ort_env::build_session(env, &graph, opts.threads.unwrap_or(0), &providers, shapes)
                .map_err(|e| match e {
                    Error::Graph { path, message } if m.kv_in_place() => Error::Graph {
                        path,
                        message: format!(
                            "{message} (this folder was exported with --fused-attention: its graph \
                             needs ONNX Runtime's GroupQueryAttention with causal=0 and an \
                             attention_bias, which the ONNX Runtime that scripts/setup.sh \
                             installs has; with another ONNX Runtime, use a folder exported \
                             without --fused-attention)"
                        ),
                    },
                    e => e,
                })?;
        let graph_inputs = session.inputs().len();
        if 2 * m.num_layers > graph_inputs {
            return Err(Error::Graph {
                path: graph,
                message: format!(
                    "the manifest's num_layers {} needs {} past inputs but the graph has {graph_inputs} inputs in all",
                    m.num_layers,
                    2 * m.num_layers
                ),
            });
        }
        let past_names: Vec<_> = (0..m.num_layers)
            .map(|l| {
                (
                    IoNames::layer(&m.io.past_key, l),
                    IoNames::layer(&m.io.past_value, l),
                )
            })
            .collect();
        let present_names: Vec<_> = (0..m.num_layers)
            .map(|l| {
                (
                    IoNames::layer(&m.io.present_key, l),
                    IoNames::layer(&m.io.present_value, l),
                )
            })
            .collect();
        check_graph(&session, &m, &graph, &past_names, &present_names)?;
        let model = Model {
            folder: dir,
            tokenizer,
            template,
            session: Mutex::new(session),
            past_names,
            present_names,
            max_context,
            providers: used,
            ort_library: lib.clone(),
            cost_curve: OnceLock::new(),
            learned_curve: Mutex::new(None),
            in_place: Mutex::new(None),
            cpu_memory: MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?,
            cost_learning: AtomicBool::new(true),
            grammar_engine: Mutex::new(None),
            manifest: m,
        };
        model.check_last_position(&graph)?;
        Ok(model)
    }

    /// One 1-token forward at the last position a session can reach (`max_context - 1`): a
    /// graph whose position tables are shorter than the manifest's `max_positions` fails here,
    /// at load, as a fault of the model folder, rather than in the middle of a long conversation.
    fn check_last_position(&self, graph: &Path) -> Result<()> {
        let m = &self.manifest;
        let last = self.max_context - 1;
        let mut cache = self.cache_of(1).ok_or_else(|| Error::Graph {
            path: graph.to_path_buf(),
            message: "one position of KV cache cannot be allocated".into(),
        })?;
        let mut buf = StepBuffers::default();
        buf.keep_last(1);
        let token = m.eos_token_ids[0];
        self.forward_at(&mut cache, &[token], 1, &mut buf, &RunOptions::new()?, last)
            .map_err(|e| Error::Graph {
                path: graph.to_path_buf(),
                message: format!(
                    "a forward at position {last} (max_context - 1) fails, so the graph holds fewer positions than the manifest's max_positions {}: load with a smaller max_context or fix max_positions ({e})",
                    m.max_positions
                ),
            })
    }

    /// The structured-output engine over this model's vocabulary, built on first use (the
    /// token trie of the whole vocabulary: tens of milliseconds for 49k tokens).
    pub(crate) fn grammar_engine(&self) -> Result<Arc<grammar::Engine>> {
        let mut slot = self
            .grammar_engine
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let e = Arc::new(grammar::Engine::new(
            &self.folder,
            &self.manifest,
            &self.tokenizer,
        )?);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// KV cache positions per session.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// True when the folder has a chat template (applied by default).
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// A new, empty KV cache sized to `max_context`; an error, never an abort, when the memory
    /// cannot be had.
    pub fn new_cache(&self) -> Result<KvCache> {
        let m = &self.manifest;
        self.cache_of(self.max_context)
            .ok_or_else(|| Error::InvalidOption {
                option: "max_context",
                value: self.max_context.to_string(),
                constraint: format!(
                    "the KV cache ({} MiB) cannot be allocated; lower max_context",
                    m.kv_bytes_per_token().saturating_mul(self.max_context) >> 20
                ),
            })
    }

    /// A cache of `capacity` positions in the layout the graph reads (its manifest's
    /// `kv_layout`); `None` when it cannot be had.
    fn cache_of(&self, capacity: usize) -> Option<KvCache> {
        let m = &self.manifest;
        let layout = if m.kv_in_place() {
            KvLayout::HeadMajor
        } else {
            KvLayout::SequenceMajor
        };
        KvCache::with_layout(m.num_layers, m.num_kv_heads, m.head_dim, capacity, layout)
    }

    /// Facts about the model and its memory budget.
    pub fn info(&self) -> ModelInfo {
        let m = &self.manifest;
        let weights_bytes = std::fs::read_dir(&self.folder)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(m.files.model.as_str())
                    })
                    .filter_map(|e| e.metadata().ok())
                    .map(|md| md.len())
                    .sum()
            })
            .unwrap_or(0);
        ModelInfo {
            folder: self.folder.clone(),
            architecture: m.architecture.clone(),
            layers: m.num_layers,
            vocab_size: m.vocab_size,
            max_positions: m.max_positions,
            max_context: self.max_context,
            kv_cache_bytes: m.kv_bytes_per_token() * self.max_context,
            kv_bytes_per_token: m.kv_bytes_per_token(),
            weights_bytes,
            execution_providers: self.providers.clone(),
            ort_library: self.ort_library.clone(),
            block_sizes: (m.block_sizes.min, m.block_sizes.max),
            gamma: (m.gamma.low, m.gamma.high),
            quantization: m.quantization.clone(),
            quantization_options: m.quantization_options.clone(),
            kv_layout: m.kv_layout.clone(),
            chat_template: self.template.is_some(),
            mask_token_id: m.mask_token_id,
        }
    }

    /// One forward: `tokens` = `causal` clean tokens then the block slots, at positions
    /// `cache.len()..`. The K/V of the clean tokens are committed to `cache`; nothing of the
    /// block is. The logits of the positions set by `buf.keep*` are left in `buf.logits`; with a
    /// `logits_index` input only those rows go through the final norm and vocabulary projection.
    pub(crate) fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        causal: usize,
        buf: &mut StepBuffers,
        run: &RunOptions,
    ) -> Result<()> {
        self.forward_at(cache, tokens, causal, buf, run, cache.len())
    }

    /// `forward` with the first token at position `first_pos` (`cache.len()` but in the
    /// load-time check of the last position).
    fn forward_at(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        causal: usize,
        buf: &mut StepBuffers,
        run: &RunOptions,
        first_pos: usize,
    ) -> Result<()> {
        let m = &self.manifest;
        let past = cache.len();
        let n = tokens.len();
        debug_assert!(causal <= n && past + n <= cache.capacity());
        debug_assert!(buf.rows.iter().all(|&r| r >= 0 && (r as usize) < n));
        buf.ids.clear();
        buf.ids.extend(tokens.iter().map(|&t| i64::from(t)));
        buf.pos.clear();
        buf.pos.extend((first_pos..first_pos + n).map(|p| p as i64));
        mask::fill(&mut buf.mask, past, causal, n - causal);
        if m.kv_in_place() {
            return self.forward_in_place(cache, causal, buf, run);
        }
        let (kvh, hd) = (m.num_kv_heads, m.head_dim);
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(4 + 2 * m.num_layers);
        inputs.push((
            Cow::Borrowed(m.io.input_ids.as_str()),
            TensorRef::from_array_view(([1, n], &buf.ids[..]))?.into(),
        ));
        inputs.push((
            Cow::Borrowed(m.io.position_ids.as_str()),
            TensorRef::from_array_view(([1, n], &buf.pos[..]))?.into(),
        ));
        inputs.push((
            Cow::Borrowed(m.io.attention_mask.as_str()),
            TensorRef::from_array_view(([1, 1, n, past + n], &buf.mask[..]))?.into(),
        ));
        if let Some(name) = &m.io.logits_index {
            inputs.push((
                Cow::Borrowed(name.as_str()),
                TensorRef::from_array_view(([buf.rows.len()], &buf.rows[..]))?.into(),
            ));
        }
        let packed = m.kv_packed();
        let view = |data| -> Result<SessionInputValue<'_>> {
            Ok(if packed {
                TensorRef::from_array_view(([1, past, kvh * hd], data))?.into()
            } else {
                TensorRef::from_array_view(([1, past, kvh, hd], data))?.into()
            })
        };
        for (l, (k, v)) in self.past_names.iter().enumerate() {
            inputs.push((Cow::Borrowed(k.as_str()), view(cache.past_keys(l))?));
            inputs.push((Cow::Borrowed(v.as_str()), view(cache.past_values(l))?));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = std::time::Instant::now();
        let outputs = session.run_with_options(inputs, run);
        buf.run_seconds += t0.elapsed().as_secs_f64();
        let outputs = outputs?;
        self.keep_logits(&outputs, n, buf)?;
        if causal > 0 {
            for (l, (k, v)) in self.present_names.iter().enumerate() {
                let (_, keys) = outputs[k.as_str()].try_extract_tensor::<f32>()?;
                let (_, values) = outputs[v.as_str()].try_extract_tensor::<f32>()?;
                cache.write(l, keys, values, causal);
            }
            cache.advance(causal);
        }
        Ok(())
    }

    /// Copy the rows the caller reads (`buf.rows`) of a forward's logits into `buf.logits`.
    fn keep_logits(
        &self,
        outputs: &SessionOutputs<'_>,
        n: usize,
        buf: &mut StepBuffers,
    ) -> Result<()> {
        let m = &self.manifest;
        let (_, logits) = outputs[m.io.logits.as_str()].try_extract_tensor::<f32>()?;
        let vocab = m.vocab_size;
        let rows = if m.io.logits_index.is_some() {
            buf.rows.len()
        } else {
            n
        };
        if logits.len() != rows * vocab {
            return Err(Error::Graph {
                path: self.folder.join(&m.files.model),
                message: format!(
                    "logits hold {} values, expected {rows} x {vocab}",
                    logits.len()
                ),
            });
        }
        buf.logits.clear();
        if m.io.logits_index.is_some() {
            buf.logits.extend_from_slice(logits);
        } else {
            for &r in &buf.rows {
                let r = r as usize;
                buf.logits
                    .extend_from_slice(&logits[r * vocab..(r + 1) * vocab]);
            }
        }
        Ok(())
    }

    /// `forward` on a `head-major-shared` graph (`export --fused-attention`): each layer's whole
    /// cache buffer is bound as both its past and its present, so the graph's
    /// `GroupQueryAttention` reads the committed positions and writes this forward's K/V at
    /// `cache.len()..` in place; committing the clean tokens is then only counting them.
    fn forward_in_place(
        &self,
        cache: &mut KvCache,
        causal: usize,
        buf: &mut StepBuffers,
        run: &RunOptions,
    ) -> Result<()> {
        let m = &self.manifest;
        let (past, n) = (cache.len(), buf.ids.len());
        let shape = [
            1,
            m.num_kv_heads as i64,
            cache.capacity() as i64,
            m.head_dim as i64,
        ];
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut slot = self.in_place.lock().unwrap_or_else(|e| e.into_inner());
        let bound = matches!(&*slot, Some(b) if b.capacity == cache.capacity()
            && b.buffers.iter().copied().eq(cache.buffer_addresses()));
        if !bound {
            *slot = None;
            let cpu = &self.cpu_memory;
            let mut binding = session.create_binding()?;
            for (l, ((pk, pv), (ok, ov))) in
                self.past_names.iter().zip(&self.present_names).enumerate()
            {
                let (keys, values) = cache.buffers_mut(l);
                for (data, past_name, present_name) in [(keys, pk, ok), (values, pv, ov)] {
                    // SAFETY: `data` is this layer's whole buffer, exactly `shape` (1 x kv_heads
                    // x capacity x head_dim floats) of CPU memory. ONNX Runtime touches it only
                    // inside a run of this binding, and a run happens only below, when the
                    // cache passed in (borrowed mutably for the whole call) has buffers at
                    // exactly these addresses and this capacity: then it is this memory.
                    let tensor = unsafe {
                        TensorRefMut::<f32>::from_raw(
                            cpu.clone(),
                            data.as_mut_ptr().cast(),
                            Shape::new(shape),
                        )?
                    };
                    bind_view(&mut binding, past_name, tensor.ptr())?;
                    // the binding holds the tensor (the past's binding above refers to it too)
                    binding.bind_output(present_name.as_str(), tensor)?;
                }
            }
            *slot = Some(InPlaceBinding {
                binding,
                buffers: cache.buffer_addresses().collect(),
                capacity: cache.capacity(),
            });
        }
        let binding = &mut slot
            .as_mut()
            .ok_or_else(|| Error::Ort("the KV cache binding was not made".into()))?
            .binding;
        // bound anew each forward: a bound output keeps the last run's value, whose shape the
        // next forward's row count need not have
        binding.bind_output_to_device(m.io.logits.as_str(), &self.cpu_memory)?;
        // The token inputs, bound anew each forward as views (no copy): they replace the last
        // forward's, and live until the run below has returned.
        let ids = TensorRef::from_array_view(([1, n], &buf.ids[..]))?;
        let pos = TensorRef::from_array_view(([1, n], &buf.pos[..]))?;
        let mask = TensorRef::from_array_view(([1, 1, n, past + n], &buf.mask[..]))?;
        let rows = TensorRef::from_array_view(([buf.rows.len()], &buf.rows[..]))?;
        bind_view(binding, &m.io.input_ids, ids.ptr())?;
        bind_view(binding, &m.io.position_ids, pos.ptr())?;
        bind_view(binding, &m.io.attention_mask, mask.ptr())?;
        if let Some(name) = &m.io.logits_index {
            bind_view(binding, name, rows.ptr())?;
        }
        let t0 = std::time::Instant::now();
        let outputs = session.run_binding_with_options(binding, run);
        buf.run_seconds += t0.elapsed().as_secs_f64();
        let outputs = outputs?;
        self.keep_logits(&outputs, n, buf)?;
        drop(outputs);
        cache.advance(causal);
        Ok(())
    }
}

fn check_graph(
    session: &Session,
    m: &Manifest,
    graph: &Path,
    past: &[(String, String)],
    present: &[(String, String)],
) -> Result<()> {
    let bad = |message: String| Error::Graph {
        path: graph.to_path_buf(),
        message,
    };
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let mut want_in = vec![
        m.io.input_ids.as_str(),
        m.io.position_ids.as_str(),
        m.io.attention_mask.as_str(),
    ];
    want_in.extend(m.io.logits_index.as_deref());
    want_in.extend(past.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
    for w in &want_in {
        if !inputs.contains(w) {
            return Err(bad(format!(
                "the manifest names input {w:?} but the graph has none (inputs: {})",
                inputs.join(", ")
            )));
        }
    }
    if inputs.len() != want_in.len() {
        return Err(bad(format!(
            "the graph has {} inputs but the manifest describes {} ({} layers x 2 past + {}): num_layers or io.logits_index disagrees with the graph",
            inputs.len(),
            want_in.len(),
            m.num_layers,
            want_in.len() - 2 * m.num_layers
        )));
    }
    let mut want_out = vec![m.io.logits.as_str()];
    want_out.extend(present.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
    for w in &want_out {
        if !outputs.contains(w) {
            return Err(bad(format!(
                "the manifest names output {w:?} but the graph has none"
            )));
        }
    }
    for o in session.inputs().iter().chain(session.outputs()) {
        if let Some(shape) = o.dtype().tensor_shape() {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let name = o.name();
            let is_kv = past
                .iter()
                .chain(present)
                .any(|(k, v)| k == name || v == name);
            if is_kv {
                let (kvh, hd) = (m.num_kv_heads as i64, m.head_dim as i64);
                // -1: any size (the batch, the sequence or the cache's capacity)
                let (want, form): (Vec<i64>, &str) = if m.kv_in_place() {
                    (
                        vec![-1, kvh, -1, hd],
                        "[batch, kv_heads, capacity, head_dim]",
                    )
                } else if m.kv_packed() {
                    (vec![-1, -1, kvh * hd], "[batch, seq, kv_heads * head_dim]")
                } else {
                    (vec![-1, -1, kvh, hd], "[batch, seq, kv_heads, head_dim]")
                };
                let fits = dims.len() == want.len()
                    && dims
                        .iter()
                        .zip(&want)
                        .all(|(&d, &w)| d < 0 || w < 0 || d == w);
                if !fits {
                    return Err(bad(format!(
                        "{name} has shape {dims:?} but the manifest's kv_layout {:?} with {} kv heads x {} head dim wants {form}",
                        m.kv_layout, m.num_kv_heads, m.head_dim
                    )));
                }
            }
            if name == m.io.logits
                && dims.len() == 3
                && dims[2] >= 0
                && dims[2] as usize != m.vocab_size
            {
                return Err(bad(format!(
                    "logits have {} columns but the manifest's vocab_size is {}",
                    dims[2], m.vocab_size
                )));
            }
        }
    }
    Ok(())
}

/// Bind `value` as the input `name` as it is, sharing its memory. ort's `IoBinding::bind_input`
/// copies a tensor that views borrowed memory, which would both cost a copy per forward and keep
/// `GroupQueryAttention` from seeing that its past and present are one buffer.
fn bind_view(binding: &mut IoBinding, name: &str, value: *const ort::sys::OrtValue) -> Result<()> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| Error::Ort(format!("input name {name:?} holds a NUL byte")))?;
    let api = ort::api();
    // SAFETY: the binding and the value are live ONNX Runtime objects (the caller keeps the value
    // alive until the run that uses the binding has returned); the name is a NUL-terminated
    // string that outlives the call; a returned status is read and released exactly once.
    unsafe {
        let status = (api.BindInput)(binding.ptr_mut(), name.as_ptr(), value);
        if status.0.is_null() {
            return Ok(());
        }
        let message = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        Err(Error::Ort(format!(
            "binding input {:?}: {message}",
            name.to_string_lossy()
        )))
    }
}

/// The bundled demo model (`models/demo`) on one thread, for the crate's unit tests.
#[cfg(test)]
pub(crate) fn demo_for_tests() -> Model {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let opts = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    Model::load(dir, &opts).expect("models/demo")
}
