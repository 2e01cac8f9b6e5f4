//! A conversation with a model: its own KV cache, multi-turn state, generate(), cancel, reset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ort::session::RunOptions;

use crate::chat::Message;
use crate::decode::{Decoder, Mode};
use crate::error::{Error, Result};
use crate::grammar::Grammar;
use crate::kv_cache::KvCache;
use crate::model::{Model, StepBuffers};
use crate::policy::{AutoMemory, AutoPolicy};
use crate::sample::{Sampler, Sampling};
use crate::select::{Selection, SlotScore};
use crate::stream::{Detokenizer, Event, Stats};

/// The entropy budget verified SBD uses when no selection is given: infinity, a whole block
/// revealed in its first forward, the check keeping its right prefix. Its accuracy does not
/// depend on gamma, and this took the fewest forwards and the least time on both models measured
/// (docs/sbd-verified.md: SmolLM2-135M-SBD 4.14x fewer forwards than NTP against 3.07x at gamma
/// 0.1; the demo 5.6-6.9x against 4.1-6.2x).
pub const VERIFIED_GAMMA: f64 = f64::INFINITY;

/// Options of one generation. `Default` gives SBD with the model's recommended low gamma.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// NTP (baseline) or SBD.
    pub mode: Mode,
    /// Block size k in SBD mode (default: the manifest's default_block_size, else min(8, the
    /// largest trained)); 1 runs the NTP loop. In `Auto` mode, the largest block size the policy
    /// may pick (smaller ones are measured powers of two).
    pub block_size: Option<usize>,
    /// Slot selection (default: EB-Sampler by entropy at the manifest's low gamma).
    pub selection: Option<Selection>,
    /// Token values.
    pub sampling: Sampling,
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// The generation ends when one of these appears in the text (not shown).
    pub stop: Vec<String>,
    /// Render the model's chat template around the prompt (default: when the model has one).
    pub chat_template: Option<bool>,
    /// Structured output: the output must match this JSON schema, regex or Lark grammar
    /// (docs/structured-output.md). Compiled before any forward; an invalid one is an error.
    pub constraint: Option<crate::grammar::Constraint>,
    /// With a constraint in SBD: fill the slots whose token the grammar forces without a
    /// forward (default true; false is the ablation docs/structured-output.md measures).
    pub forced_tokens: bool,
    /// SBD and `auto`: check every drafted token against the model's own NTP choice before it
    /// is emitted (`decode::verify`): the checks ride on the forward that starts the next block,
    /// a wrong token and what follows it are replaced by the NTP choice. With greedy values the
    /// output is the model's NTP greedy output; sampled, it is distributed as NTP sampling's
    /// (speculative sampling). With a constraint the output is NTP + grammar decoding's (greedy)
    /// or distributed as its sampling is. Without a `selection`, verified SBD reveals a whole block a forward
    /// ([`VERIFIED_GAMMA`]). Default false (the paper's SBD).
    pub verify: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            mode: Mode::Sbd,
            block_size: None,
            selection: None,
            sampling: Sampling::default(),
            max_new_tokens: 256,
            stop: Vec::new(),
            chat_template: None,
            constraint: None,
            forced_tokens: true,
            verify: false,
        }
    }
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Output {
    /// The generated text (stop string and EOS not included).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// Measurements.
    pub stats: Stats,
}

/// Stops a generation from any thread: between forwards, and a forward in flight (ONNX Runtime
/// run options). The session stays usable.
#[derive(Clone)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    run: Arc<RunOptions>,
    gate: Arc<Mutex<()>>,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.flag.load(Ordering::SeqCst))
            .finish()
    }
}

impl CancelHandle {
    /// Cancel the generation in progress (a no-op when none is running).
    pub fn cancel(&self) {
        // under the gate, so that a generation starting or ending at this moment clears both or
        // neither: a run terminated while the flag reads false would surface as an ONNX Runtime
        // error instead of a cancelled generation
        let _g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.run.terminate();
    }
}

/// One conversation. Owns its KV cache (preallocated to the model's `max_context`).
pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    context: Vec<u32>,
    messages: Vec<Message>,
    buf: StepBuffers,
    input: Vec<u32>,
    scores: Vec<SlotScore>,
    flag: Arc<AtomicBool>,
    run: Arc<RunOptions>,
    /// Shared with the cancel handles: a cancel and a generation's clearing of it never interleave.
    gate: Arc<Mutex<()>>,
    /// What `auto` generations learned of the text (tokens per forward per block size, retry
    /// interval), per selection rule and verified or not (the last `AUTO_MEMORIES` used): the
    /// next `auto` generation with the same ones starts from it instead of trying every block
    /// size again.
    auto_memory: Vec<((Selection, bool), AutoMemory)>,
}

/// Selection rules whose `auto` memory a session keeps.
const AUTO_MEMORIES: usize = 4;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("context_tokens", &self.context.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new conversation on `model`.
    pub fn new(model: Arc<Model>) -> Result<Session> {
        let cache = model.new_cache()?;
        Ok(Session {
            model,
            cache,
            context: Vec::new(),
            messages: Vec::new(),
            buf: StepBuffers::default(),
            input: Vec::new(),
            scores: Vec::new(),
            flag: Arc::new(AtomicBool::new(false)),
            run: Arc::new(RunOptions::new()?),
            gate: Arc::new(Mutex::new(())),
            auto_memory: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// A handle that cancels this session's generations from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            flag: self.flag.clone(),
            run: self.run.clone(),
            gate: self.gate.clone(),
        }
    }

    /// Clear a cancel (at the start and the end of a generation), atomically with respect to
    /// [`CancelHandle::cancel`].
    fn clear_cancel(&self) {
        let _g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.flag.store(false, Ordering::SeqCst);
        let _ = self.run.unterminate();
    }

    /// Forget the conversation (the cache memory stays allocated). What `auto` learned of the
    /// model's tokens per forward is kept: the next conversation is likely the same kind of text.
    pub fn reset(&mut self) {
        self.cache.reset();
        self.context.clear();
        self.messages.clear();
    }

    /// Every token of the conversation so far.
    pub fn context_tokens(&self) -> &[u32] {
        &self.context
    }

    /// The KV cache (committed positions are `cache().len()`).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The conversation's messages (chat mode).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Replace the conversation's messages (chat mode): the next [`Session::generate`] renders
    /// them, then its prompt as the next user message, and reuses the cached tokens the
    /// rendering shares with the current context (a server answering a client's whole message
    /// list re-runs only what changed).
    pub fn set_messages(&mut self, messages: Vec<Message>) {
        self.messages = messages;
    }

    /// The block size and selection rule `opts` resolve to on this model (checked).
    pub fn resolve(&self, opts: &GenerateOptions) -> Result<(usize, Selection)> {
        let m = &self.model.manifest;
        let k = opts.block_size.unwrap_or(m.block_size());
        if k == 0 || k > m.block_sizes.max {
            return Err(Error::InvalidOption {
                option: "block_size",
                value: k.to_string(),
                constraint: format!(
                    "must be in [1, {}] (the largest block size the model was trained with)",
                    m.block_sizes.max
                ),
            });
        }
        if opts.max_new_tokens == 0 {
            return Err(Error::InvalidOption {
                option: "max_new_tokens",
                value: "0".into(),
                constraint: "must be >= 1".into(),
            });
        }
        if opts.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidOption {
                option: "stop",
                value: "\"\"".into(),
                constraint: "a stop string must not be empty (it would match before any text)"
                    .into(),
            });
        }
        let sel = opts.selection.unwrap_or(Selection::EbEntropy {
            gamma: if opts.verify {
                VERIFIED_GAMMA
            } else {
                m.gamma.low
            },
        });
        sel.validate()?;
        opts.sampling.validate()?;
        Ok((k, sel))
    }

    /// Generate a reply to `prompt`, streaming events to `on_event`. With a chat template (the
    /// default when the model has one) the conversation so far is rendered around it; without,
    /// the prompt's tokens are appended to the context as they are.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Output> {
        self.resolve(opts)?;
        let use_template = opts.chat_template.unwrap_or(true) && self.model.template.is_some();
        if opts.chat_template == Some(true) && self.model.template.is_none() {
            return Err(Error::InvalidOption {
                option: "chat_template",
                value: "true".into(),
                constraint: "the model folder has no chat template (tokenizer_config.json chat_template); pass the prompt raw".into(),
            });
        }
        let tok = &self.model.tokenizer;
        let ids: Vec<u32> = if use_template {
            let mut msgs = self.messages.clone();
            msgs.push(Message {
                role: "user".into(),
                content: prompt.into(),
            });
            let text = self
                .model
                .template
                .as_ref()
                .map(|t| t.render(&msgs))
                .transpose()?
                .unwrap_or_default();
            let all = tok
                .encode(text, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec();
            let common = all
                .iter()
                .zip(&self.context)
                .take_while(|(a, b)| a == b)
                .count()
                // the last prompt token is fed again when all of it is cached (its logits start the reply)
                .min(all.len().saturating_sub(1));
            self.context.truncate(common);
            self.cache.truncate(common);
            all[common..].to_vec()
        } else {
            let mut ids = Vec::new();
            if self.context.is_empty() {
                ids.extend(self.model.manifest.bos_token_id);
            }
            ids.extend_from_slice(
                tok.encode(prompt, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?
                    .get_ids(),
            );
            ids
        };
        let out = self.generate_tokens(&ids, opts, &mut on_event)?;
        if use_template {
            self.messages.push(Message {
                role: "user".into(),
                content: prompt.into(),
            });
            self.messages.push(Message {
                role: "assistant".into(),
                content: out.text.clone(),
            });
        }
        Ok(out)
    }

    /// Append `prompt_ids` to the context as they are and generate (no template, no BOS).
    pub fn generate_tokens(
        &mut self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Output> {
        let (k, rule) = self.resolve(opts)?;
        let m = &self.model.manifest;
        if let Some(&bad) = prompt_ids.iter().find(|&&t| t as usize >= m.vocab_size) {
            return Err(Error::InvalidOption {
                option: "prompt token",
                value: bad.to_string(),
                constraint: format!("token ids must be < vocab_size {}", m.vocab_size),
            });
        }
        let needed = self.context.len() + prompt_ids.len();
        if needed
            .checked_add(opts.max_new_tokens)
            .is_none_or(|total| total > self.cache.capacity())
        {
            return Err(Error::ContextOverflow {
                context_tokens: needed,
                max_new_tokens: opts.max_new_tokens,
                max_context: self.cache.capacity(),
                model_limit: m.max_positions,
            });
        }
        let grammar = match &opts.constraint {
            Some(c) => {
                Some(Grammar::new(&*self.model.grammar_engine()?, c)?.forcing(opts.forced_tokens))
            }
            None => None,
        };
        self.context.extend_from_slice(prompt_ids);
        self.clear_cancel();
        let model = self.model.clone();
        let dec = Decoder {
            model: &model,
            cache: &mut self.cache,
            context: &mut self.context,
            buf: &mut self.buf,
            input: &mut self.input,
            scores: &mut self.scores,
            sampler: Sampler::new(opts.sampling),
            detok: Detokenizer::new(opts.stop.clone()),
            run: &self.run,
            cancelled: &self.flag,
            grammar,
            masked: Vec::new(),
            drafts: Vec::new(),
        };
        let result = match (opts.mode, k) {
            (Mode::Ntp, _) | (Mode::Sbd | Mode::Auto, 1) => dec.ntp(opts.max_new_tokens, on_event),
            (Mode::Sbd, _) if opts.verify => {
                dec.sbd_verified(k, rule, opts.max_new_tokens, None, on_event)
            }
            (Mode::Sbd, _) => dec.sbd(k, rule, opts.max_new_tokens, None, on_event),
            (Mode::Auto, _) => {
                let mut curve = model.auto_cost_curve()?;
                curve.blocks.retain(|b| b.0 <= k);
                let mut policy = if model.cost_learning() {
                    AutoPolicy::new(curve)
                } else {
                    AutoPolicy::fixed(curve)
                };
                // verified blocks keep fewer tokens than unverified ones: remembered apart
                let key = (rule, opts.verify);
                if let Some((_, m)) = self.auto_memory.iter().find(|(r, _)| *r == key) {
                    policy.remember(m);
                }
                let r = if opts.verify {
                    dec.sbd_verified(k, rule, opts.max_new_tokens, Some(&mut policy), on_event)
                } else {
                    dec.sbd(k, rule, opts.max_new_tokens, Some(&mut policy), on_event)
                };
                if policy.learns() {
                    model.store_learned_curve(&policy.corrected());
                }
                self.auto_memory.retain(|(r, _)| *r != key);
                if self.auto_memory.len() == AUTO_MEMORIES {
                    self.auto_memory.remove(0);
                }
                self.auto_memory.push((key, policy.memory()));
                r
            }
        };
        self.clear_cancel();
        match result {
            Ok(d) => {
                let eos = &self.model.manifest.eos_token_ids;
                let shown: Vec<u32> = d
                    .tokens
                    .iter()
                    .copied()
                    .filter(|t| !eos.contains(t))
                    .collect();
                let mut text = self
                    .model
                    .tokenizer
                    .decode(&shown, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                if d.stats.stop_reason == crate::stream::StopReason::StopString {
                    if let Some(pos) = opts
                        .stop
                        .iter()
                        .filter(|s| !s.is_empty())
                        .filter_map(|s| text.find(s.as_str()))
                        .min()
                    {
                        text.truncate(pos);
                    }
                }
                Ok(Output {
                    text,
                    tokens: d.tokens,
                    stats: d.stats,
                })
            }
            Err(e) => {
                // Keep the context consistent with the cache: drop what was not committed.
                self.context.truncate(self.cache.len());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadOptions;

    /// The cancel handle reaches ONNX Runtime: a terminated run fails inside `Session::run`, and
    /// after `unterminate` the same run options work again.
    #[test]
    fn terminate_aborts_the_run_in_onnx_runtime() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        let model = Model::load(dir, &LoadOptions::default()).unwrap();
        let mut cache = model.new_cache().unwrap();
        let mut buf = StepBuffers::default();
        let run = RunOptions::new().unwrap();
        run.terminate().unwrap();
        buf.keep_last(3);
        assert!(model
            .forward(&mut cache, &[5, 6, 7], 3, &mut buf, &run)
            .is_err());
        assert_eq!(cache.len(), 0, "a failed forward commits nothing");
        run.unterminate().unwrap();
        model
            .forward(&mut cache, &[5, 6, 7], 3, &mut buf, &run)
            .unwrap();
        assert_eq!(cache.len(), 3);
    }
}

#[cfg(test)]
mod prefill_tests {
    use super::*;

    /// A prompt longer than `PREFILL_CHUNK` is prefilled in chunks: the cache equals one
    /// whole-prompt forward and so does the first token.
    #[test]
    fn chunked_prefill_equals_one_forward() {
        let model = Arc::new(crate::model::demo_for_tests());
        let n = crate::decode::PREFILL_CHUNK + 90;
        let prompt: Vec<u32> = (0..n).map(|i| 3 + (i * 7 % 400) as u32).collect();
        let mut s = Session::new(model.clone()).unwrap();
        let ntp = GenerateOptions {
            mode: Mode::Ntp,
            max_new_tokens: 1,
            ..GenerateOptions::default()
        };
        let out = s.generate_tokens(&prompt, &ntp, &mut |_| {}).unwrap();
        assert_eq!(out.stats.forward_passes, 2, "one chunk, then the rest");
        assert_eq!(s.cache().len(), n);

        let mut cache = model.new_cache().unwrap();
        let mut buf = StepBuffers::default();
        buf.keep_last(n);
        let run = RunOptions::new().unwrap();
        model
            .forward(&mut cache, &prompt, n, &mut buf, &run)
            .unwrap();
        let first = crate::sample::argmax(&buf.logits, model.manifest.mask_token_id);
        assert_eq!(out.tokens[0], first);
        let worst = s.cache().max_abs_diff(&cache);
        assert!(worst < 1e-4, "max abs diff {worst}");
    }
}
