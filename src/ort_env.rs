//! ONNX Runtime: finding the shared library, execution providers, building sessions.
//!
//! Library discovery order: the explicit option, `ORT_DYLIB_PATH`, the project-managed copy
//! (`.setblock/onnxruntime/`, written by `scripts/setup.sh`), next to the executable.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::error::{Error, Result};
use crate::manifest::{IoNames, Manifest};

/// Where an execution provider's graph runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU kernels (always available).
    Cpu,
    /// NVIDIA CUDA (cargo feature `cuda`).
    Cuda {
        /// GPU index.
        device_id: i32,
    },
    /// NVIDIA TensorRT with an engine cache (cargo feature `tensorrt`).
    TensorRt {
        /// GPU index.
        device_id: i32,
        /// Folder for the engine and timing caches.
        cache_dir: PathBuf,
    },
    /// Apple CoreML (cargo feature `coreml`).
    CoreMl,
    /// Android NNAPI (cargo feature `nnapi`).
    Nnapi,
    /// XNNPACK (cargo feature `xnnpack`).
    Xnnpack,
}

impl ExecutionProvider {
    /// Parse `cpu`, `cuda`, `cuda:1`, `tensorrt`, `coreml`, `nnapi`, `xnnpack`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, dev) = match s.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let device_id = match dev {
            Some(d) => d.parse::<i32>().map_err(|_| Error::InvalidOption {
                option: "execution_provider",
                value: s.into(),
                constraint: "the device after ':' must be an integer, e.g. cuda:0".into(),
            })?,
            None => 0,
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            "cpu" => Self::Cpu,
            "cuda" => Self::Cuda { device_id },
            "tensorrt" | "trt" => Self::TensorRt {
                device_id,
                cache_dir: PathBuf::from(".setblock/trt-cache"),
            },
            "coreml" => Self::CoreMl,
            "nnapi" => Self::Nnapi,
            "xnnpack" => Self::Xnnpack,
            _ => {
                return Err(Error::InvalidOption {
                    option: "execution_provider",
                    value: s.into(),
                    constraint: "choose one of cpu, cuda[:N], tensorrt[:N], coreml, nnapi, xnnpack"
                        .into(),
                })
            }
        })
    }

    /// The provider's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda { .. } => "cuda",
            Self::TensorRt { .. } => "tensorrt",
            Self::CoreMl => "coreml",
            Self::Nnapi => "nnapi",
            Self::Xnnpack => "xnnpack",
        }
    }
}

/// Shapes for TensorRT optimisation profiles: the prefill and the block step.
#[derive(Debug, Clone, Copy)]
pub struct ProfileShapes<'a> {
    /// The model's manifest (I/O names and KV dimensions).
    pub manifest: &'a Manifest,
    /// Largest context (past + new).
    pub max_context: usize,
    /// Largest block size (the block step carries up to 2k tokens).
    pub max_block: usize,
}

static RUNTIME: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn lib_names() -> &'static [&'static str] {
    if cfg!(target_os = "windows") {
        &["onnxruntime.dll"]
    } else if cfg!(target_os = "macos") {
        &["libonnxruntime.dylib"]
    } else {
        &["libonnxruntime.so"]
    }
}

/// The candidate library paths in discovery order (for messages and `setblock info`).
pub fn candidates(explicit: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(("explicit ort_library option".into(), p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(("ORT_DYLIB_PATH".into(), PathBuf::from(p)));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for r in roots {
        for n in lib_names() {
            let p = r.join(".setblock/onnxruntime").join(n);
            if !out.iter().any(|(_, q)| q == &p) {
                out.push(("project copy (scripts/setup.sh)".into(), p));
            }
        }
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for n in lib_names() {
            out.push(("next to the executable".into(), dir.join(n)));
        }
    }
    out
}

/// Find the library: an explicit or `ORT_DYLIB_PATH` path must exist; the others are searched.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let cands = candidates(explicit);
    for (source, path) in &cands {
        let named = source.starts_with("explicit") || source == "ORT_DYLIB_PATH";
        if path.is_file() {
            return Ok(path.clone());
        }
        if named {
            return Err(Error::Runtime(format!(
                "{} from {source} does not exist; point it at a libonnxruntime >= 1.22 or unset it",
                path.display()
            )));
        }
    }
    let tried: Vec<String> = cands
        .iter()
        .take(6)
        .map(|(_, p)| p.display().to_string())
        .collect();
    Err(Error::Runtime(format!(
        "no libonnxruntime found (tried {} ...); run scripts/setup.sh (fetches the pinned ONNX Runtime into .setblock/onnxruntime/) or set ORT_DYLIB_PATH",
        tried.join(", ")
    )))
}

/// Load ONNX Runtime once per process and return the environment and the library path.
pub fn runtime(explicit: Option<&Path>) -> Result<&'static (PathBuf, Environment)> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        if let Some(p) = explicit {
            let want = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            let have = rt.0.canonicalize().unwrap_or_else(|_| rt.0.clone());
            if want != have {
                return Err(Error::Runtime(format!(
                    "ONNX Runtime is already loaded from {} in this process; it cannot also load {} (one library per process)",
                    rt.0.display(),
                    p.display()
                )));
            }
        }
        return Ok(rt);
    }
    let path = find_library(explicit)?;
    let env = ort::init_from(&path)
        .map_err(|e| {
            Error::Runtime(format!(
                "{e}; this runtime needs ONNX Runtime >= 1.22 (scripts/setup.sh fetches 1.32)"
            ))
        })?
        .with_name("setblock")
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| (path, env)))
}

fn ep_error(name: &str, message: impl Into<String>) -> Error {
    Error::ExecutionProvider {
        name: name.into(),
        message: message.into(),
    }
}

/// Build a session on `graph` with `threads` intra-op threads (0 = ONNX Runtime's default) and the
/// requested providers, registered strictly: a provider that fails to register is an error, never
/// a silent CPU fallback. Returns the session and the providers that run it.
pub fn build_session(
    env: &Environment,
    graph: &Path,
    threads: usize,
    providers: &[ExecutionProvider],
    #[allow(unused_variables)] shapes: ProfileShapes,
) -> Result<(Session, Vec<String>)> {
    let map = |e: ort::Error<ort::session::builder::SessionBuilder>| Error::Ort(e.to_string());
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(map)?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(map)?;
    }
    let mut used = Vec::new();
    #[allow(unused_mut)]
    let mut dispatch = Vec::new();
    for p in providers {
        match p {
            ExecutionProvider::Cpu => {}
            #[cfg(feature = "cuda")]
            ExecutionProvider::Cuda { device_id } => {
                dispatch.push(
                    ort::ep::CUDA::default()
                        .with_device_id(*device_id)
                        .build()
                        .error_on_failure(),
                );
            }
            #[cfg(feature = "tensorrt")]
            ExecutionProvider::TensorRt {
                device_id,
                cache_dir,
            } => {
                std::fs::create_dir_all(cache_dir).map_err(|e| {
                    ep_error(
                        "tensorrt",
                        format!("cache folder {}: {e}", cache_dir.display()),
                    )
                })?;
                let dir = cache_dir.display().to_string();
                let (min, opt, max) = trt_profiles(shapes);
                dispatch.push(
                    ort::ep::TensorRT::default()
                        .with_device_id(*device_id)
                        .with_engine_cache(true)
                        .with_engine_cache_path(&dir)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&dir)
                        .with_profile_min_shapes(min)
                        .with_profile_opt_shapes(opt)
                        .with_profile_max_shapes(max)
                        .build()
                        .error_on_failure(),
                );
                dispatch.push(
                    ort::ep::CUDA::default()
                        .with_device_id(*device_id)
                        .build()
                        .error_on_failure(),
                );
            }
            #[cfg(feature = "coreml")]
            ExecutionProvider::CoreMl => {
                dispatch.push(ort::ep::CoreML::default().build().error_on_failure())
            }
            #[cfg(feature = "nnapi")]
            ExecutionProvider::Nnapi => {
                dispatch.push(ort::ep::NNAPI::default().build().error_on_failure())
            }
            #[cfg(feature = "xnnpack")]
            ExecutionProvider::Xnnpack => {
                dispatch.push(ort::ep::XNNPACK::default().build().error_on_failure())
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(ep_error(
                    other.name(),
                    format!(
                    "this build has no support for it; rebuild with `cargo build --features {}`",
                    other.name()
                ),
                ))
            }
        }
        used.push(p.name().to_string());
    }
    if !dispatch.is_empty() {
        b = b
            .with_execution_providers(dispatch)
            .map_err(|e| ep_error(&used.join(","), format!("registration failed: {e}")))?;
    }
    used.push("cpu".into());
    used.dedup();
    if !graph.is_file() {
        return Err(Error::MissingFile {
            path: graph.to_path_buf(),
            what: "ONNX graph",
            hint: "the manifest's files.model must name a file in the folder",
        });
    }
    let session = b.commit_from_file(graph).map_err(|e| Error::Graph {
        path: graph.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((session, used))
}

/// TensorRT profiles (min, opt, max): min is a one-token step on an empty cache, opt the SBD
/// block step (2k tokens over half the context), max a prefill of the whole context.
#[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
pub fn trt_profiles(s: ProfileShapes) -> (String, String, String) {
    let m = s.manifest;
    let shape = |seq: usize, past: usize| {
        let mut parts = vec![
            format!("{}:1x{seq}", m.io.input_ids),
            format!("{}:1x{seq}", m.io.position_ids),
            format!("{}:1x1x{seq}x{}", m.io.attention_mask, past + seq),
        ];
        for l in 0..m.num_layers {
            for pat in [&m.io.past_key, &m.io.past_value] {
                let name = IoNames::layer(pat, l);
                parts.push(if m.kv_in_place() {
                    // one buffer of the whole context, whatever the past
                    format!(
                        "{name}:1x{}x{}x{}",
                        m.num_kv_heads, s.max_context, m.head_dim
                    )
                } else if m.kv_packed() {
                    format!("{name}:1x{past}x{}", m.num_kv_heads * m.head_dim)
                } else {
                    format!("{name}:1x{past}x{}x{}", m.num_kv_heads, m.head_dim)
                });
            }
        }
        parts.join(",")
    };
    let step = (2 * s.max_block).min(s.max_context);
    (
        shape(1, 0),
        shape(step, s.max_context / 2),
        shape(s.max_context, s.max_context),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trt_profiles_follow_the_kv_layout() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        let mut m = Manifest::load(&dir).unwrap();
        let opt = |m: &Manifest| {
            trt_profiles(ProfileShapes {
                manifest: m,
                max_context: 128,
                max_block: 16,
            })
            .1
        };
        let (kvh, hd) = (m.num_kv_heads, m.head_dim);
        assert!(m.kv_packed());
        // the block step: 2k tokens over half the context, K/V packed to one row per position
        let packed = opt(&m);
        assert!(packed.contains("input_ids:1x32,"), "{packed}");
        assert!(packed.contains(&format!("past_key_values.1.value:1x64x{}", kvh * hd)));
        m.kv_layout = "sequence-major".into();
        let four = opt(&m);
        assert!(four.contains(&format!("past_key_values.1.value:1x64x{kvh}x{hd}")));
        m.kv_layout = "head-major-shared".into();
        let shared = opt(&m);
        assert!(shared.contains(&format!("past_key_values.1.value:1x{kvh}x128x{hd}")));
    }
}
