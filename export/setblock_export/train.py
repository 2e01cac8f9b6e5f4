"""`finetune`: the SBD objective (method doc section 2) or the NTP-only baseline.

Every random choice of a step (batch, block size k, eta, which slots are masked) is drawn from a
generator seeded by (seed, step), so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import arch
from .data import Example, encode
from .masks import additive, training_allowed

IGNORE = -100


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (saved with the checkpoint)."""

    objective: str = "sbd"  # "sbd" or "ntp"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    k_min: int = 2
    k_max: int = 16
    seed: int = 0
    bf16: bool = False
    checkpoint_every: int = 200


@dataclass
class Batch:
    """Tensors of one micro-batch."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    ntp_targets: torch.Tensor  # [B, Lmax - 1]
    matp_targets: torch.Tensor  # [B, Rmax]
    clean_len: int


def make_batch(
    examples: list[Example], objective: str, k: int, mask_id: int, pad_id: int, gen: torch.Generator
) -> Batch:
    """Lay out [clean | noisy] (SBD) or [clean] (NTP) with masks and targets."""
    lmax = max(len(e.ids) for e in examples)
    rmax = max(len(e.ids) - e.start for e in examples) if objective == "sbd" else 0
    b, t = len(examples), lmax + rmax
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    pos = torch.zeros((b, t), dtype=torch.long)
    allowed = torch.zeros((b, t, t), dtype=torch.bool)
    ntp = torch.full((b, lmax - 1), IGNORE, dtype=torch.long)
    matp = torch.full((b, rmax), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        x = torch.tensor(e.ids)
        ids[i, :n] = x
        pos[i, :lmax] = torch.arange(lmax)
        first = max(e.start, 1)  # first NTP target position
        ntp[i, first - 1 : n - 1] = x[first:]
        if objective == "sbd":
            r = n - e.start
            eta = torch.rand((), generator=gen)
            masked = torch.rand(r, generator=gen) < eta
            noisy = x[e.start :].clone()
            noisy[masked] = mask_id
            ids[i, lmax : lmax + r] = noisy
            pos[i, lmax:] = torch.arange(e.start, e.start + rmax)
            matp[i, :r] = torch.where(masked, x[e.start :], torch.full_like(noisy, IGNORE))
            allowed[i] = training_allowed(n, e.start, k, lmax, rmax)
        else:
            allowed[i] = training_allowed(n, 0, 1, lmax, 0)
    return Batch(ids, pos, additive(allowed), ntp, matp, lmax)


def loss_of(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """(NTP sum + masked-slot sum) / number of NTP targets, and that count."""
    logits, _ = arch.forward(model, batch.input_ids, batch.position_ids, batch.mask, sdpa=True)
    logits = logits.float()
    v = logits.shape[-1]
    lmax = batch.clean_len
    ntp = F.cross_entropy(
        logits[:, : lmax - 1].reshape(-1, v), batch.ntp_targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    total = ntp
    if batch.matp_targets.numel():
        matp = F.cross_entropy(
            logits[:, lmax:].reshape(-1, v), batch.matp_targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total = total + matp
    count = int((batch.ntp_targets != IGNORE).sum())
    return total / max(count, 1), count


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine down to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of one micro-step: a function of (seed, step, micro) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + micro)


def finetune(
    checkpoint: Path, data: Path, out: Path, cfg: TrainConfig, resume: bool = False, stop_after: int | None = None
) -> Path:
    """Train ``checkpoint`` on ``data``; writes checkpoints under ``out/checkpoint`` and the model to ``out``.

    ``stop_after`` ends the run early after that many steps (used by the resume test).
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ckpt_dir = out / "checkpoint"
    if out.exists() and not resume:
        raise FileExistsError(
            f"output folder {out} already exists; pass --resume to continue it or choose another --out"
        )
    src = ckpt_dir if resume and (ckpt_dir / "state.pt").exists() else checkpoint
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    arch.architecture_of(model)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    mask_id = tok.mask_token_id
    if cfg.objective == "sbd" and mask_id is None:
        raise ValueError(f"{checkpoint}: the tokenizer has no mask token; SBD training needs one (add <|mask|>)")
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    examples = encode(data, tok, eos_id, model.config.max_position_embeddings)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start_step = 0
    if src == ckpt_dir:
        state = torch.load(ckpt_dir / "state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        start_step = state["step"]
        cfg = TrainConfig(**state["config"])
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("a", encoding="utf-8")
    model.train()
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=f"{cfg.objective} finetune")
    tokens, t0 = 0, time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            gen = step_generator(cfg.seed, step, micro)
            k = int(torch.randint(cfg.k_min, cfg.k_max + 1, (), generator=gen))
            idx = torch.randint(len(examples), (cfg.batch_size,), generator=gen)
            batch = make_batch([examples[int(i)] for i in idx], cfg.objective, k, mask_id or 0, pad_id, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, _ = loss_of(model, batch)
            (loss / cfg.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.grad_accum
            tokens += int(batch.input_ids.numel())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rate = tokens / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr_at(step, cfg):.2e}", tok_s=f"{rate:.0f}")
        log.write(json.dumps({"step": step + 1, "loss": step_loss, "lr": lr_at(step, cfg)}) + "\n")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or (stop_after and done >= stop_after):
            _save_checkpoint(model, opt, cfg, done, ckpt_dir)
        if stop_after and done >= stop_after:
            log.close()
            return out
    log.close()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    prov_path = Path(checkpoint) / "setblock_train.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {"base_model": str(checkpoint), "runs": []}
    prov["runs"].append(
        {
            **asdict(cfg),
            "data": str(data),
            "documents": len(examples),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    (out / "setblock_train.json").write_text(json.dumps(prov, indent=2))
    return out


def _save_checkpoint(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, d: Path) -> None:
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "step": step, "config": asdict(cfg)}, tmp / "state.pt")
    if d.exists():
        old = d.with_name(d.name + ".old")
        d.rename(old)
        tmp.rename(d)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(d)
