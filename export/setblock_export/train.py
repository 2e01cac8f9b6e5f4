"""`finetune`: the SBD objective (method doc section 2) or the NTP-only baseline, one loop for every
place it runs: CPU or CUDA, one process or many under ``torchrun`` (DDP, or FSDP2 with
``--fsdp``), full fine-tuning or LoRA (peft), padded rows or packed ones.

Reproducibility: every random choice of a micro-step (k, the documents, each document's eta and
masked slots) comes from a generator seeded by (seed, step, micro) and is drawn for the *global*
micro-batch, whatever the number of ranks; each rank then trains on its own slice of the rows. So
a resumed run repeats an uninterrupted one bit for bit, and a run on 2 ranks gives the per-step
losses of the same run on 1 rank (up to float summation order).

The loss of a micro-step is (NTP sum + MATP sum) over the whole global micro-batch, divided by its
number of NTP targets (``--ntp-weight`` w scales the NTP sum: (w * NTP sum + MATP sum); 1, the
paper's loss, by default) (known on every rank without communication: every rank drew every row).
Each rank back-propagates its partial sum scaled by the world size, since DDP and FSDP average
gradients over ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from tqdm import tqdm

from . import arch, hf
from .batches import IGNORE, Batch, Plan, layout
from .data import Corpus, Tokenized

STATE = "state.pt"


class TrainError(ValueError):
    """A fine-tuning run that cannot start as asked (the message names the option to change)."""


@dataclass
class TrainConfig:
    """Hyper-parameters and placement of one run (saved with the checkpoint)."""

    objective: str = "sbd"  # "sbd" or "ntp"
    steps: int = 1000
    batch_size: int = 32  # rows per optimizer step, over all ranks and micro-steps
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    k_min: int = 2
    k_max: int = 16
    ntp_weight: float = 1.0  # SBD: the weight of the clean tokens' NTP loss against the masked slots' (1 = the paper's)
    seed: int = 0
    checkpoint_every: int = 200
    seq_len: int = 0  # packed rows of this many tokens; 0 = one document a row, padded
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 0.0  # 0 = 2 * rank
    add_mask_token: bool = False
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; the weights stay fp32)
    attention: str = "auto"  # auto | sdpa | flex
    fsdp: bool = False
    activation_checkpointing: bool = False

    def check(self) -> None:
        """Refuse values out of range, naming the option."""
        if self.objective not in ("sbd", "ntp"):
            raise TrainError(f"--objective {self.objective}: use sbd or ntp")
        if not 1 <= self.k_min <= self.k_max:
            raise TrainError(f"--k-min {self.k_min} / --k-max {self.k_max}: need 1 <= k-min <= k-max")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.batch_size % self.grad_accum:
            raise TrainError(f"--batch-size {self.batch_size} is not a multiple of --grad-accum {self.grad_accum}")
        if self.seq_len < 0 or self.lora_rank < 0 or self.lora_alpha < 0:
            raise TrainError("--seq-len, --lora-rank and --lora-alpha cannot be negative")
        if not (self.ntp_weight > 0 and math.isfinite(self.ntp_weight)):
            raise TrainError(f"--ntp-weight {self.ntp_weight}: must be a finite number above 0 (1 = the paper's loss)")
        if self.objective == "ntp" and self.ntp_weight != 1.0:
            raise TrainError(
                f"--ntp-weight {self.ntp_weight}: weighs NTP against masked slots, which --objective ntp has none of"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.warmup < 0:
            raise TrainError(f"--lr {self.lr} / --warmup {self.warmup}: need lr > 0 and warmup >= 0")
        for name, allowed in (
            ("device", ("auto", "cpu", "cuda")),
            ("precision", ("auto", "fp32", "bf16")),
            ("attention", ("auto", "sdpa", "flex")),
        ):
            if getattr(self, name) not in allowed:
                raise TrainError(f"--{name} {getattr(self, name)}: use one of {', '.join(allowed)}")


@dataclass
class Placement:
    """Where this process trains: its rank among ``world`` and its device."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this run created the process group (and destroys it)

    @property
    def main(self) -> bool:
        """Rank 0 writes files and draws the progress bar."""
        return self.rank == 0


def place(cfg: TrainConfig) -> Placement:
    """The device, and the process group when launched by ``torchrun`` (NCCL on CUDA, gloo on CPU)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu or auto")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Placement(rank, world, device, owns)


def resolve(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast?, FlexAttention?) for this device: bf16 and flex on CUDA, fp32 and SDPA on CPU.

    On CPU bf16 autocast measured about 15x slower than fp32 at SmolLM2-135M's size (2 threads),
    and FlexAttention has no backward pass on CPU (PyTorch 2.15): bf16 is allowed when asked for,
    flex is refused there.
    """
    cuda = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    flex = cfg.attention == "flex" or (cfg.attention == "auto" and cuda)
    if flex and not cuda:
        raise TrainError(
            "--attention flex: PyTorch's FlexAttention has no backward pass on CPU; use --attention sdpa "
            "(or auto) there, the same mask as a dense matrix"
        )
    return bf16, flex


class SBDLoss(nn.Module):
    """The training forward: (summed) cross-entropy of a batch under its SBD training mask.

    Wraps the causal LM (plain or with LoRA layers); each decoder layer's ``forward`` becomes
    :func:`arch.decoder_layer` (the exporter's own layer math, taking a dense mask or a
    FlexAttention ``BlockMask``), so FSDP's per-layer hooks fire. Logits are computed only for the
    positions that carry a label.
    """

    def __init__(self, lm: nn.Module, *, checkpointing: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.checkpointing = checkpointing
        for layer in lm.model.layers:
            layer.forward = partial(arch.decoder_layer, layer, sdpa=True)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor,
        mask,  # noqa: ANN001
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of the token losses (NTP targets and masked slots), each times its ``weights`` entry
        when given (a tensor shaped as ``labels``)."""
        inner = self.lm.model
        h = inner.embed_tokens(input_ids)
        cos, sin = arch.rotary(self.lm, h, position_ids)
        for layer in inner.layers:
            if self.checkpointing and self.training:
                h, _ = activation_checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h, _ = layer(h, cos, sin, mask)
        sel = labels != IGNORE
        logits = self.lm.lm_head(inner.norm(h[sel])).float()
        if weights is None:
            return F.cross_entropy(logits, labels[sel], reduction="sum")
        return (F.cross_entropy(logits, labels[sel], reduction="none") * weights[sel]).sum()


def loss_weights(batch: Batch, cfg: TrainConfig) -> tuple[torch.Tensor, ...]:
    """The per-token loss weights of ``--ntp-weight`` (w on the clean tokens' NTP targets, 1 on
    the noisy copies' masked slots), as extra arguments of the loss; none at w = 1 (the plain sum)."""
    if cfg.ntp_weight == 1.0:
        return ()
    w = torch.full(batch.labels.shape, cfg.ntp_weight, dtype=torch.float32, device=batch.labels.device)
    return (w.masked_fill(batch.noisy, 1.0),)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine down to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of one micro-step: a function of (seed, step, micro) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + micro)


def _mask_token(tok, model: nn.Module, cfg: TrainConfig, checkpoint: Path) -> int | None:  # noqa: ANN001
    """The mask token id SBD trains (added as ``<|mask|>`` with --add-mask-token), None for NTP."""
    if cfg.objective != "sbd" and tok.mask_token_id is None:
        return None
    try:
        mask_id, _ = hf.find_mask_token(tok, model, cfg.add_mask_token)
    except hf.CheckpointError as e:
        raise TrainError(f"{checkpoint}: SBD training needs a mask token: {e}") from e
    if tok.mask_token_id is None:  # a reserved token: make it the tokenizer's mask token
        tok.add_special_tokens({"mask_token": tok.convert_ids_to_tokens(mask_id)})
    hf.add_mask_row(model, mask_id)
    return mask_id


def _lora(model: nn.Module, cfg: TrainConfig, mask_id: int | None) -> nn.Module:
    """LoRA on every linear layer (peft), plus the mask token's embedding (and untied output) row."""
    from peft import LoraConfig, get_peft_model

    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    tokens = None
    if mask_id is not None and cfg.objective == "sbd":
        tokens = [mask_id] if tied else {"embed_tokens": [mask_id], "lm_head": [mask_id]}
    lcfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        lora_dropout=0.0,
        target_modules="all-linear",
        trainable_token_indices=tokens,
    )
    torch.manual_seed(cfg.seed)  # LoRA's A matrices: the same on every rank and every run
    return get_peft_model(model, lcfg)


def _wrap(module: SBDLoss, cfg: TrainConfig, where: Placement) -> nn.Module:
    """DDP, FSDP2 (``fully_shard`` per decoder layer, then the root) or nothing (one process)."""
    if where.world == 1:
        return module
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in module.lm.model.layers:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [where.device.index] if where.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _sync(runner: nn.Module, module: nn.Module, cfg: TrainConfig, last: bool) -> contextlib.AbstractContextManager:
    """Gradient synchronisation only on the last micro-step of an optimizer step."""
    if hasattr(runner, "no_sync") and not last:
        return runner.no_sync()
    if cfg.fsdp and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _options(**kw) -> StateDictOptions:  # noqa: ANN003
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _save_state(module: nn.Module, opt: torch.optim.Optimizer, extra: dict, d: Path, main: bool) -> None:
    """The trainable weights and optimizer as full (unsharded) state dicts: any number of ranks can resume."""
    model_sd, optim_sd = get_state_dict(module, opt, options=_options(ignore_frozen_params=True))
    if not main:
        return
    # A frozen weight can still come back under a second name (peft's tied lm_head token adapter holds
    # the base embedding as its base_layer): keep only what training changes, so a LoRA state stays small.
    trainable = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    model_sd = {k: v for k, v in model_sd.items() if k in trainable}
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_sd, "optimizer": optim_sd, **extra}, tmp / STATE)
    if d.exists():
        old = d.with_name(d.name + ".old")
        d.rename(old)
        tmp.rename(d)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(d)


def _load_state(module: nn.Module, opt: torch.optim.Optimizer, d: Path) -> dict:
    state = torch.load(d / STATE, map_location="cpu", weights_only=False)
    set_state_dict(
        module,
        opt,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_options(strict=False),
    )
    return state


def _adapter_record(adapter: Path) -> dict:
    path = adapter / hf.TRAIN_RECORD
    if not path.is_file():
        raise TrainError(
            f"--init-adapter {adapter}: no {hf.TRAIN_RECORD}; give a folder written by finetune --lora-rank"
        )
    return json.loads(path.read_text())


def _check_init_adapter(adapter: Path, checkpoint: Path, cfg: TrainConfig) -> None:
    """Refuse an adapter that this run cannot continue, naming what differs."""
    if not hf.is_adapter(adapter):
        raise TrainError(f"--init-adapter {adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if not cfg.lora_rank:
        raise TrainError(f"--init-adapter {adapter}: needs --lora-rank (the adapter's rank) to continue it")
    rec = _adapter_record(adapter)
    if not rec.get("runs"):
        raise TrainError(f"--init-adapter {adapter}: its {hf.TRAIN_RECORD} lists no runs")
    last = rec["runs"][-1]
    if last.get("lora_rank") != cfg.lora_rank:
        raise TrainError(
            f"--init-adapter {adapter} has rank {last.get('lora_rank')}; pass --lora-rank {last.get('lora_rank')}"
        )
    weights = hf.weights_file(checkpoint)
    want = rec.get("lora_base_sha256")
    if want and weights and hf.sha256(weights) != want:
        raise TrainError(
            f"--init-adapter {adapter} was trained on a base with sha256 {want[:12]}..., not --checkpoint {checkpoint}"
        )


def _start_from_adapter(lm: nn.Module, adapter: Path, docs: Sequence) -> int:
    """Load a finished adapter's trained weights into the LoRA model; return the data cursor its runs
    left (each run's plan replayed over the same documents)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(lm, load_file(adapter / "adapter_model.safetensors"))
    # (a tied head's token adapter shares the embedding's delta: only LoRA matrices must all be there)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise TrainError(
            f"--init-adapter {adapter}: {len(result.unexpected_keys) + len(missing)} weights do not fit this "
            f"model (e.g. {(result.unexpected_keys + missing)[0]}); it was trained with other LoRA settings or base"
        )
    cursor = 0
    for run in _adapter_record(adapter)["runs"]:
        if run.get("documents") != len(docs):
            raise TrainError(
                f"--init-adapter {adapter}: its run saw {run.get('documents')} documents, --data has {len(docs)}; "
                "continue it on the same data"
            )
        plan = Plan(
            docs,
            objective=run["objective"],
            k_min=run["k_min"],
            k_max=run["k_max"],
            rows=run["batch_size"] // run["grad_accum"],
            seq_len=run["seq_len"],
            seed=run["seed"],
        )
        plan.cursor = cursor
        for step in range(run["steps"]):
            for micro in range(run["grad_accum"]):
                plan.micro(step_generator(run["seed"], step, micro))
        cursor = plan.cursor
    return cursor


def _barrier(where: Placement) -> None:
    if where.world > 1:
        dist.barrier()


def finetune(  # noqa: PLR0913
    checkpoint: Path,
    data: Path,
    out: Path,
    cfg: TrainConfig,
    resume: bool = False,
    stop_after: int | None = None,
    time_limit: float | None = None,
    init_adapter: Path | None = None,
) -> Path:
    """Train ``checkpoint`` on ``data``; writes checkpoints under ``out/checkpoint`` and the model to ``out``.

    With ``cfg.lora_rank`` the result is a LoRA adapter folder (small) that ``export`` merges into
    its base. ``stop_after`` ends the run early, with a checkpoint, after that many steps (the
    resume test's "crash"); ``time_limit`` (seconds) after the step during which it runs out (a
    session's or a batch job's share of a long run): ``--resume`` continues either.

    ``init_adapter`` starts a new stage from a finished LoRA adapter of the same base (``finetune
    --lora-rank`` output): its trained weights, a fresh optimizer and this run's schedule, and the
    data from the first document its runs did not reach (their plans are replayed). The adapter's
    training record carries over, with this run appended. A resumed stage restores its own state.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt_dir = out / "checkpoint"
    resuming = resume and (ckpt_dir / STATE).exists()
    if out.exists() and not resume:
        raise FileExistsError(
            f"output folder {out} already exists; pass --resume to continue it or choose another --out"
        )
    if resuming:
        saved = torch.load(ckpt_dir / STATE, map_location="cpu", weights_only=False)
        cfg = TrainConfig(**{f.name: saved["config"][f.name] for f in fields(TrainConfig) if f.name in saved["config"]})
        del saved
    cfg.check()
    if not hf.is_checkpoint(checkpoint):
        raise TrainError(f"--checkpoint {checkpoint}: not a Hugging Face folder (config.json), .gguf file or adapter")
    if cfg.lora_rank and hf.is_adapter(checkpoint):
        raise TrainError(
            f"--checkpoint {checkpoint} is a LoRA adapter: continue it with --resume on its --out, or "
            "export it (merged) and start a new LoRA run from that folder"
        )
    if init_adapter is not None:
        init_adapter = Path(init_adapter)
        _check_init_adapter(init_adapter, checkpoint, cfg)
    where = place(cfg)
    try:
        deadline = time.monotonic() + time_limit if time_limit else None
        return _run(checkpoint, Path(data), out, cfg, where, resuming, stop_after, deadline, init_adapter)
    finally:
        if where.owns_group:
            dist.destroy_process_group()


def _run(  # noqa: PLR0913, PLR0915 - the loop, in one place
    checkpoint: Path,
    data: Path,
    out: Path,
    cfg: TrainConfig,
    where: Placement,
    resuming: bool,
    stop_after: int | None,
    deadline: float | None,
    init_adapter: Path | None = None,
) -> Path:
    ckpt_dir = out / "checkpoint"
    micro_rows = cfg.batch_size // cfg.grad_accum
    if micro_rows % where.world:
        raise TrainError(
            f"--batch-size {cfg.batch_size} / --grad-accum {cfg.grad_accum} = {micro_rows} rows a micro-step, "
            f"not a multiple of the {where.world} ranks; change --batch-size, --grad-accum or --nproc-per-node"
        )
    per_rank = micro_rows // where.world
    bf16, flex = resolve(cfg, where.device)
    model = hf.load_model(checkpoint)
    arch.architecture_of(model)
    tok = hf.load_tokenizer(checkpoint)
    mask_id = _mask_token(tok, model, cfg, checkpoint)
    eos_id = tok.eos_token_id
    if eos_id is None:
        raise TrainError(f"{checkpoint}: the tokenizer has no EOS token; every training document ends with one")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    docs = Tokenized(Corpus(data), tok, eos_id, model.config.max_position_embeddings)
    plan = Plan(
        docs,
        objective=cfg.objective,
        k_min=cfg.k_min,
        k_max=cfg.k_max,
        rows=micro_rows,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
    )
    lm = _lora(model, cfg, mask_id) if cfg.lora_rank else model
    base_lm = lm.base_model.model if cfg.lora_rank else lm
    module = SBDLoss(base_lm, checkpointing=cfg.activation_checkpointing).to(where.device)
    module.train()
    runner = _wrap(module, cfg, where)
    trainable = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start_step, seen = 0, 0
    if resuming:
        state = _load_state(module, opt, ckpt_dir)
        start_step, seen, plan.cursor = state["step"], state.get("clean_tokens", 0), state.get("cursor", 0)
        if init_adapter is None and state.get("init_adapter"):  # a stage resumed without the flag
            init_adapter = Path(state["init_adapter"])
    elif init_adapter is not None:
        plan.cursor = _start_from_adapter(lm, init_adapter, docs)
    log = None  # opened after the first step: a run that cannot lay out its first batch leaves no folder
    bar = tqdm(
        range(start_step, cfg.steps),
        initial=start_step,
        total=cfg.steps,
        desc=f"{cfg.objective}{' lora' if cfg.lora_rank else ''} finetune",
        disable=not where.main,
    )
    t0, run_tokens, done = time.perf_counter(), 0, start_step
    for step in bar:
        t_step = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        local_loss = torch.zeros((), dtype=torch.float64)
        step_tokens = laid_out = 0
        for micro in range(cfg.grad_accum):
            rows, length = plan.micro(step_generator(cfg.seed, step, micro))
            count = sum(s.ntp_targets() for row in rows for s in row)
            step_tokens += sum(len(s.example.ids) for row in rows for s in row)
            laid_out += sum(len(s) for row in rows for s in row)
            mine = rows[where.rank * per_rank : (where.rank + 1) * per_rank]
            if not cfg.seq_len:
                length = max(sum(len(s) for s in row) for row in mine)
            batch = layout(mine, length, mask_id if mask_id is not None else 0, pad_id).to(where.device)
            last = micro == cfg.grad_accum - 1
            with _sync(runner, module, cfg, last), torch.autocast(where.device.type, torch.bfloat16, enabled=bf16):
                weights = loss_weights(batch, cfg)
                total = runner(batch.input_ids, batch.position_ids, batch.labels, _mask(batch, flex), *weights)
                loss = total * (where.world / max(count, 1) / cfg.grad_accum)
                loss.backward()
            local_loss += float(total.detach()) / max(count, 1) / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step_loss = _global(local_loss, where)
        seen += step_tokens
        run_tokens += step_tokens
        rate = run_tokens / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr_at(step, cfg):.2e}", clean_tok_s=f"{rate:.0f}")
        done = step + 1
        if where.main and log is None:
            out.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(out / "metrics.jsonl", start_step)
            log = (out / "metrics.jsonl").open("a", encoding="utf-8")
        if log is not None:
            rec = {"step": done, "loss": step_loss, "lr": lr_at(step, cfg), "clean_tokens": step_tokens}
            rec["tokens"] = laid_out  # clean + noisy copies, without padding
            rec["seconds"] = round(time.perf_counter() - t_step, 4)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        early = (stop_after is not None and done >= stop_after) or _out_of_time(deadline, where)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or early:
            extra = {"step": done, "cursor": plan.cursor, "clean_tokens": seen, "config": asdict(cfg)}
            if init_adapter is not None:  # the stage's record lists the adapter's runs first
                extra["init_adapter"] = str(init_adapter)
            _save_state(module, opt, extra, ckpt_dir, where.main)
            _barrier(where)
        if early:
            break
    if log is not None:
        log.close()
    if done < cfg.steps:
        return out
    _save_final(module, lm, tok, checkpoint, data, out, cfg, where, seen, len(docs), init_adapter)
    _barrier(where)
    return out


def _mask(batch: Batch, flex: bool):  # noqa: ANN202 - a dense tensor or a BlockMask
    return batch.block_mask() if flex else batch.dense_mask()


def _global(local: torch.Tensor, where: Placement) -> float:
    """The step's loss over all ranks (each holds its rows' share)."""
    if where.world == 1:
        return float(local)
    t = local.to(where.device, torch.float32 if where.device.type == "cuda" else torch.float64)
    dist.all_reduce(t)
    return float(t)


def _out_of_time(deadline: float | None, where: Placement) -> bool:
    """Whether the time limit has passed, on any rank (so that all ranks stop at the same step)."""
    if deadline is None:
        return False
    late = torch.tensor(float(time.monotonic() >= deadline), device=where.device)
    if where.world > 1:
        dist.all_reduce(late, op=dist.ReduceOp.MAX)
    return bool(late)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics of steps after the checkpoint being resumed (they will be run again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _save_final(  # noqa: PLR0913
    module: SBDLoss,
    lm: nn.Module,
    tok,  # noqa: ANN001
    checkpoint: Path,
    data: Path,
    out: Path,
    cfg: TrainConfig,
    where: Placement,
    seen: int,
    documents: int,
    init_adapter: Path | None = None,
) -> None:
    """The trained model (full fine-tuning) or adapter (LoRA), its tokenizer and its training record."""
    model_sd = get_state_dict(module, [], options=_options(ignore_frozen_params=bool(cfg.lora_rank)))[0]
    if not where.main:
        return
    prefix = "lm."
    sd = {k.removeprefix(prefix): v for k, v in model_sd.items()}
    if cfg.lora_rank:
        # peft's own key names: the LoRA model's state dict is the PeftModel's under "base_model.model.".
        # The embedding stays out even when the vocabulary grew by <|mask|>: that row is the mean of the
        # others (hf.add_mask_row, deterministic) plus the adapter's trained delta.
        sd = {"base_model.model." + k: v for k, v in sd.items()}
        lm.save_pretrained(out, state_dict=sd, save_embedding_layers=False)
    else:
        lm.save_pretrained(out, state_dict=sd)
    tok.save_pretrained(out)
    record_dir = checkpoint.parent if checkpoint.suffix == ".gguf" else checkpoint
    if init_adapter is not None:  # a later stage: the earlier stages' runs come first
        record_dir = init_adapter
    prov_path = record_dir / hf.TRAIN_RECORD
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {"base_model": str(checkpoint), "runs": []}
    if cfg.lora_rank:
        weights = hf.weights_file(checkpoint)
        prov["lora_base"] = str(checkpoint.resolve())
        prov["lora_base_sha256"] = hf.sha256(weights) if weights else None
    prov["runs"].append(
        {
            **asdict(cfg),
            "data": str(data),
            "documents": documents,
            "clean_tokens": seen,
            "ranks": where.world,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    (out / hf.TRAIN_RECORD).write_text(json.dumps(prov, indent=2))
