"""The reference decoder: NTP greedy and SBD with the EB-Sampler (method doc sections 3-4).

Plain and obviously correct on purpose: it is the oracle the Rust runtime is tested against.
Greedy values (first maximum on ties, the mask token never chosen); entropies in float64 from the
untempered softmax over the vocabulary without the mask token; slots sorted by entropy, ties by
slot index; the block ends at the first revealed EOS (later slots are dropped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import KV_HEAD_MAJOR_SHARED, KV_SEQUENCE_MAJOR_PACKED, arch
from .masks import additive, step_allowed


class TorchBackend:
    """Forward through PyTorch (arch.forward) on a HF checkpoint."""

    def __init__(self, checkpoint: Path, mask_id: int | None = None) -> None:
        from .hf import add_mask_row, load_model

        self.model = load_model(checkpoint)
        if mask_id is not None:  # a mask token added at export: the same deterministic row
            add_mask_row(self.model, mask_id)

    def __call__(self, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray, past: list[np.ndarray]):  # noqa: ANN204
        pairs = [(torch.from_numpy(past[2 * i]), torch.from_numpy(past[2 * i + 1])) for i in range(len(past) // 2)]
        with torch.no_grad():
            logits, presents = arch.forward(
                self.model, torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(mask), pairs
            )
        return logits.numpy(), [t.numpy() for kv in presents for t in kv]


class OnnxBackend:
    """Forward through the folder's model.onnx with onnxruntime (CPU)."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        # Format-1 graphs exported before `logits_index` existed compute every row's logits.
        self.has_index = "logits_index" in self.names
        self.past_names = [n for n in self.names if n.startswith("past_key_values.")]
        # kv_layout "sequence-major-packed" graphs take [B, S, kv_heads * head_dim]; the cache here
        # stays [B, S, kv_heads, head_dim] (the same memory) for every layout.
        manifest = json.loads((folder / "setblock.json").read_text())
        self.packed = manifest["kv_layout"] == KV_SEQUENCE_MAJOR_PACKED
        # "head-major-shared" graphs (--fused-attention) read the past from, and write this
        # forward's K/V into, one [B, kv_heads, capacity, head_dim] buffer bound as both: each
        # past input's present output, by the manifest's names
        self.shared = manifest["kv_layout"] == KV_HEAD_MAJOR_SHARED
        io = manifest["io"]
        self.present_of = {
            io[f"past_{kv}"] % i: io[f"present_{kv}"] % i
            for i in range(manifest["num_layers"])
            for kv in ("key", "value")
        }

    def __call__(  # noqa: ANN204
        self,
        ids: np.ndarray,
        pos: np.ndarray,
        mask: np.ndarray,
        past: list[np.ndarray],
        rows: np.ndarray | None = None,
    ):
        """Logits of ``rows`` (default: every position) and the presents."""
        feed = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
        if self.has_index:
            feed["logits_index"] = np.arange(ids.shape[1], dtype=np.int64) if rows is None else rows
        elif rows is not None:
            raise ValueError("this graph has no logits_index input (exported before it existed)")
        if self.shared:
            return self._run_shared(feed, past, ids.shape[1])
        for name, t in zip(self.past_names, past, strict=True):
            feed[name] = t.reshape(t.shape[0], t.shape[1], t.shape[2] * t.shape[3]) if self.packed else t
        out = self.sess.run(None, feed)
        presents = out[1:]
        if self.packed:
            hd = past[0].shape[3]
            presents = [p.reshape(p.shape[0], p.shape[1], p.shape[2] // hd, hd) for p in presents]
        return out[0], presents

    def _run_shared(self, feed: dict, past: list[np.ndarray], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward of a ``head-major-shared`` graph: each layer's past copied head-major into a
        buffer with room for this forward, bound as both past and present; the presents returned
        are the positions the op wrote, back in the caller's ``[B, S, kv_heads, head_dim]`` form."""
        import onnxruntime as ort

        binding = self.sess.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits")
        buffers = []
        for name, t in zip(self.past_names, past, strict=True):
            b, p, h, d = t.shape
            buf = np.zeros((b, h, p + n, d), np.float32)
            buf[:, :, :p] = t.transpose(0, 2, 1, 3)
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(self.present_of[name], value)
            buffers.append((value, p))
        self.sess.run_with_iobinding(binding)
        logits = np.array(binding.get_outputs()[0].numpy(), copy=True)
        presents = [np.array(v.numpy()[:, :, p:].transpose(0, 2, 1, 3), order="C", copy=True) for v, p in buffers]
        return logits, presents


@dataclass
class Result:
    """Generated tokens and the number of forward passes (prefill included)."""

    tokens: list[int]
    forwards: int
    per_forward: list[int] = field(default_factory=list)  # slots revealed per forward (SBD)


class Reference:
    """A model folder's manifest + tokenizer + a forward backend."""

    def __init__(self, folder: Path, backend) -> None:  # noqa: ANN001
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.m = json.loads((self.folder / "setblock.json").read_text())
        self.tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.backend = backend

    @classmethod
    def load(cls, folder: Path, onnx: bool = True, checkpoint: Path | None = None) -> Reference:
        """ONNX backend, or PyTorch on ``checkpoint`` (default: the folder's source checkpoint)."""
        folder = Path(folder)
        if onnx:
            return cls(folder, OnnxBackend(folder))
        m = json.loads((folder / "setblock.json").read_text())
        return cls(folder, TorchBackend(checkpoint or Path(m["provenance"]["source_checkpoint"])))

    # -- cache ---------------------------------------------------------------------------------
    def empty_cache(self) -> list[np.ndarray]:
        """Per layer key and value, ``[1, 0, kv_heads, head_dim]``."""
        shape = (1, 0, self.m["num_kv_heads"], self.m["head_dim"])
        return [np.zeros(shape, np.float32) for _ in range(2 * self.m["num_layers"])]

    def inputs(self, cache: list[np.ndarray], causal: list[int], block: list[int]) -> tuple[np.ndarray, ...]:
        """input_ids, position_ids and the additive block mask of one forward."""
        past = cache[0].shape[1]
        ids = np.array([causal + block], dtype=np.int64)
        pos = np.arange(past, past + ids.shape[1], dtype=np.int64)[None]
        mask = additive(step_allowed(past, len(causal), len(block))).numpy()
        return ids, pos, mask

    def step(self, cache: list[np.ndarray], causal: list[int], block: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward: ``causal`` clean tokens (their K/V returned) then ``block`` slots."""
        ids, pos, mask = self.inputs(cache, causal, block)
        logits, presents = self.backend(ids, pos, mask, cache)
        return logits[0], presents

    @staticmethod
    def commit(cache: list[np.ndarray], presents: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Append the first ``n`` positions of the presents (the clean tokens) to the cache."""
        return [np.concatenate([c, p[:, :n]], axis=1) for c, p in zip(cache, presents, strict=True)]

    # -- decoding ------------------------------------------------------------------------------
    def _greedy(self, row: np.ndarray) -> int:
        row = row.astype(np.float64).copy()
        row[self.m["mask_token_id"]] = -np.inf
        return int(np.argmax(row))

    def _entropy(self, row: np.ndarray) -> float:
        row = row.astype(np.float64).copy()
        row[self.m["mask_token_id"]] = -np.inf
        z = row - row.max()
        p = np.exp(z)
        p /= p.sum()
        nz = p > 0
        return float(-(p[nz] * np.log(p[nz])).sum())

    def ntp(self, prompt: list[int], max_new: int) -> Result:
        """One token per forward."""
        eos = set(self.m["eos_token_ids"])
        cache = self.empty_cache()
        logits, presents = self.step(cache, prompt, [])
        cache = self.commit(cache, presents, len(prompt))
        out, forwards = [], 1
        while True:
            t = self._greedy(logits[-1])
            out.append(t)
            if t in eos or len(out) >= max_new:
                return Result(out, forwards)
            logits, presents = self.step(cache, [t], [])
            cache = self.commit(cache, presents, 1)
            forwards += 1

    def sbd(self, prompt: list[int], block_size: int, gamma: float, max_new: int) -> Result:
        """The SBD block loop with the EB-Sampler (entropy order)."""
        eos = set(self.m["eos_token_ids"])
        mask_id = self.m["mask_token_id"]
        cache = self.empty_cache()
        pending, out, forwards, per_forward = list(prompt), [], 0, []
        while len(out) < max_new:
            k = min(block_size, max_new - len(out))
            block = [mask_id] * k
            revealed = [False] * k
            end = k  # slots at or after `end` are dropped (after an EOS)
            while True:
                todo = [i for i in range(end) if not revealed[i]]
                if not todo:
                    break
                logits, presents = self.step(cache, pending, block[:end])
                forwards += 1
                if pending:
                    cache = self.commit(cache, presents, len(pending))
                    pending = []
                end, n = self._reveal(logits[-end:], block, revealed, end, gamma)
                per_forward.append(n)
            block = block[:end]
            out += block
            if any(t in eos for t in block):
                break
            pending = block
        return Result(out, forwards, per_forward)

    def _reveal(
        self, rows: np.ndarray, block: list[int], revealed: list[bool], end: int, gamma: float
    ) -> tuple[int, int]:
        """EB-Sampler over the masked slots before ``end`` (``rows[i]``: slot i's logits); returns
        the new end (a revealed EOS ends the block) and how many slots it revealed."""
        todo = [i for i in range(end) if not revealed[i]]
        ent = sorted((self._entropy(rows[i]), i) for i in todo)
        chosen, acc = [ent[0][1]], ent[0][0]
        for h, i in ent[1:]:
            if acc > gamma:
                break
            chosen.append(i)
            acc += h
        for i in chosen:
            block[i] = self._greedy(rows[i])
            revealed[i] = True
        eos = set(self.m["eos_token_ids"])
        return next((i + 1 for i in range(end) if revealed[i] and block[i] in eos), end), len(chosen)

    def sbd_verified(self, prompt: list[int], block_size: int, gamma: float, max_new: int) -> Result:
        """Verified SBD (docs/sbd-verified.md), greedy: SBD drafts a block whose first slot is the
        NTP choice; the forward that starts the next block checks each drafted token against the
        NTP choice of the row before it, keeps the run that agrees and replaces the first that
        does not. The output is ``ntp``'s."""
        eos = set(self.m["eos_token_ids"])
        mask_id = self.m["mask_token_id"]
        cache = self.empty_cache()
        pending, draft, out, forwards = list(prompt), [], [], 0  # pending: final tokens not cached
        while True:
            room = max_new - len(out) - len(draft)
            k = 0 if room == 0 or (draft and draft[-1] in eos) else min(block_size, room)
            k = k if k >= 2 else 0
            logits, presents = self.step(cache, pending + draft, [mask_id] * k)
            forwards += 1
            n = len(pending) + len(draft)
            rows = logits[n - len(draft) - 1 : n]  # the token before the draft, then the draft's
            ok = next((i for i, t in enumerate(draft) if self._greedy(rows[i]) != t), len(draft))
            cache = self.commit(cache, presents, len(pending) + ok)
            nxt = self._greedy(rows[ok])
            out += draft[:ok]
            cut = ok < len(draft)
            if out and out[-1] in eos:
                return Result(out, forwards)
            if len(out) < max_new:
                out.append(nxt)
            if nxt in eos or len(out) >= max_new:
                return Result(out, forwards)
            pending, draft = [nxt], []
            if cut or k == 0:
                continue
            block, revealed = [nxt] + [mask_id] * (k - 1), [True] + [False] * (k - 1)
            end = k
            slots = logits[n:]
            while True:
                end, _ = self._reveal(slots, block, revealed, end, gamma)
                if all(revealed[:end]):
                    break
                slots, _ = self.step(cache, [], block[:end])
                forwards += 1
            draft = block[1:end]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's tokens as training lays them out (data.py): BOS first, unless the text
        already starts with it (a rendered chat prompt: SmolLM2's BOS is <|im_start|>)."""
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        bos = self.m.get("bos_token_id")
        return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids

    def generate_text(self, prompt: str, *, mode: str, block_size: int, gamma: float, max_new_tokens: int) -> dict:
        """Render the prompt as is (no chat template), decode, and return a JSON-able summary."""
        ids = self.prompt_ids(prompt)
        if mode == "ntp" or block_size == 1:
            r = self.ntp(ids, max_new_tokens)
        elif mode == "sbd_verified":
            r = self.sbd_verified(ids, block_size, gamma, max_new_tokens)
        else:
            r = self.sbd(ids, block_size, gamma, max_new_tokens)
        return {"text": self.tok.decode(r.tokens), "tokens": r.tokens, "forwards": r.forwards}
