"""finetune: both objectives run, lower the loss and resume bit for bit after a crash; packing;
the SDPA and FlexAttention paths give the same loss; LoRA trains, merges, exports and verifies;
2 ranks (torchrun, gloo; DDP and FSDP2) give the per-step losses of 1, and resume on 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint
from safetensors.torch import load_file

from setblock_export import hf
from setblock_export.batches import IGNORE, Plan, layout
from setblock_export.data import Corpus, Tokenized
from setblock_export.onnx_export import export_folder
from setblock_export.tasks import make_task_data
from setblock_export.train import SBDLoss, TrainConfig, TrainError, finetune, loss_weights, step_generator
from setblock_export.verify import run_checks


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    make_task_data(d, train_per_task=40, test_per_task=5, val_per_task=5)
    return d / "train.jsonl"


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("objective", "seq_len", "lora_rank"), [("sbd", 0, 0), ("ntp", 0, 0), ("sbd", 256, 0), ("sbd", 0, 4)]
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    tmp_path: Path, tokenizer_obj, data: Path, objective: str, seq_len: int, lora_rank: int
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, std=0.02, max_position_embeddings=256)
    cfg = TrainConfig(
        objective=objective,
        steps=6,
        batch_size=4,
        lr=3e-3,
        warmup=2,
        checkpoint_every=3,
        seed=5,
        seq_len=seq_len,
        lora_rank=lora_rank,
        add_mask_token=bool(lora_rank),
    )
    finetune(ckpt, data, tmp_path / "full", cfg)
    finetune(ckpt, data, tmp_path / "crashed", cfg, stop_after=3)  # "crash" after the step-3 checkpoint
    weights = "adapter_model.safetensors" if lora_rank else "model.safetensors"
    assert not (tmp_path / "crashed" / weights).exists()
    if lora_rank:  # the resumable state holds what training changes, never a frozen base weight
        state = torch.load(tmp_path / "crashed" / "checkpoint" / "state.pt", weights_only=False)
        assert state["model"] and all("lora_" in k or "trainable_tokens" in k for k in state["model"])
    finetune(ckpt, data, tmp_path / "crashed", cfg, resume=True)
    a = load_file(tmp_path / "full" / weights)
    b = load_file(tmp_path / "crashed" / weights)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = losses(tmp_path / "full")
    assert len(full) == 6 and (lora_rank or full[-1] < full[0])  # LoRA's learning: the LoRA test below
    assert losses(tmp_path / "crashed") == full
    prov = json.loads((tmp_path / "full" / "setblock_train.json").read_text())
    run = prov["runs"][-1]
    assert run["objective"] == objective and run["steps"] == 6 and run["seq_len"] == seq_len
    assert run["clean_tokens"] > 0


def test_packed_rows_hold_several_documents_and_stream_in_epochs(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=256)
    tok = hf.load_tokenizer(ckpt)
    docs = Tokenized(Corpus(data), tok, tok.eos_token_id, 256)
    plan = Plan(docs, objective="sbd", k_min=2, k_max=4, rows=3, seq_len=320, seed=0)
    seen: list[int] = []
    for step in range(2 * len(docs) // 6):
        rows, length = plan.micro(step_generator(0, step, 0))
        assert length == 320 and len(rows) == 3
        assert all(sum(len(s) for s in row) <= 320 for row in rows)
        seen += [id(s) for row in rows for s in row]
    assert max(len(row) for row in rows) > 1  # short documents share a row
    assert plan.cursor == len(seen) and plan.cursor > len(docs)  # went on into the next epoch


def test_a_document_longer_than_the_packed_row_names_the_option(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=256)
    with pytest.raises(ValueError, match=r"train.jsonl:\d+: .* more than --seq-len 8"):
        finetune(ckpt, data, tmp_path / "out", TrainConfig(steps=1, batch_size=2, seq_len=8))
    assert not (tmp_path / "out").exists()


def packed_sbd_batch(tmp_path: Path, tokenizer_obj, data: Path, arch: str):  # noqa: ANN001, ANN201
    """A packed SBD micro-batch (3 rows of 320 tokens) of a small ``arch`` checkpoint, with the
    tokenizer, its rows of segments and the training loss module."""
    ckpt = make_checkpoint(tmp_path / "ckpt", arch, tokenizer_obj, std=0.05, max_position_embeddings=256)
    tok = hf.load_tokenizer(ckpt)
    docs = Tokenized(Corpus(data), tok, tok.eos_token_id, 256)
    plan = Plan(docs, objective="sbd", k_min=2, k_max=8, rows=3, seq_len=320, seed=1)
    rows, length = plan.micro(step_generator(1, 0, 0))
    batch = layout(rows, length, tok.mask_token_id, tok.pad_token_id)
    return tok, rows, batch, SBDLoss(hf.load_model(ckpt))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_sdpa_and_flex_attention_give_the_same_loss(tmp_path: Path, tokenizer_obj, data: Path, arch: str) -> None:
    tok, rows, batch, module = packed_sbd_batch(tmp_path, tokenizer_obj, data, arch)
    with torch.no_grad():  # FlexAttention has no backward pass on CPU (CUDA only)
        dense = module(batch.input_ids, batch.position_ids, batch.labels, batch.dense_mask())
        flex = module(batch.input_ids, batch.position_ids, batch.labels, batch.block_mask())
        torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-4)
        # the packed batch's loss is the sum of its documents' losses, each laid out alone
        alone = 0.0
        for row in rows:
            for seg in row:
                b = layout([[seg]], len(seg), tok.mask_token_id, tok.pad_token_id)
                alone += float(module(b.input_ids, b.position_ids, b.labels, b.dense_mask()))
    assert abs(alone - float(dense)) < 1e-3 * abs(alone)


def test_the_ntp_weight_scales_the_clean_tokens_loss_only(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    _, _, batch, module = packed_sbd_batch(tmp_path, tokenizer_obj, data, "llama")
    assert loss_weights(batch, TrainConfig()) == ()  # the paper's loss: the plain sum
    (w,) = loss_weights(batch, TrainConfig(ntp_weight=3.0))
    with torch.no_grad():
        args = (batch.input_ids, batch.position_ids)
        mask = batch.dense_mask()
        ntp = float(module(*args, batch.labels.masked_fill(batch.noisy, IGNORE), mask))
        slots = float(module(*args, batch.labels.masked_fill(~batch.noisy, IGNORE), mask))
        weighted = float(module(*args, batch.labels, mask, w))
    assert ntp > 0 and slots > 0  # the batch has both kinds of target
    assert abs(weighted - (3.0 * ntp + slots)) < 1e-4 * weighted


@pytest.mark.parametrize(("arch", "mask"), [("llama", False), ("qwen2", True)])
def test_lora_trains_a_small_adapter_that_exports_merged_and_verifies(
    tmp_path: Path, tokenizer_obj, data: Path, arch: str, mask: bool
) -> None:
    """llama: tied embeddings and no mask token (added, its row trained); qwen2: untied, own mask token."""
    ckpt = make_checkpoint(tmp_path / "ckpt", arch, tokenizer_obj, mask=mask, std=0.05, max_position_embeddings=256)
    cfg = TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup=2, seed=3, lora_rank=4, add_mask_token=not mask)
    out = finetune(ckpt, data, tmp_path / "lora", cfg)
    assert hf.is_adapter(out) and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("trainable_tokens" in k for k in adapter)
    base_params = sum(t.numel() for t in load_file(ckpt / "model.safetensors").values())
    assert sum(t.numel() for t in adapter.values()) < base_params / 4
    full = losses(out)
    assert full[-1] < full[0]
    merged = hf.load_model(out)
    tok = hf.load_tokenizer(out)
    assert tok.mask_token_id is not None and merged.get_input_embeddings().weight.shape[0] > tok.mask_token_id
    base = hf.load_base(ckpt)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base.state_dict().get(n, p * 0))]
    assert any("q_proj" in n for n in changed)  # the merge really changed the linear layers
    folder = export_folder(out, tmp_path / "onnx")
    manifest = json.loads((folder / "setblock.json").read_text())
    assert manifest["mask_token_id"] == tok.mask_token_id
    for c in run_checks(folder):
        assert c["max_abs_diff"] < 1e-3 and c["top1"] == 1.0, c


def test_an_adapter_refuses_a_changed_base(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=256)
    out = finetune(ckpt, data, tmp_path / "lora", TrainConfig(steps=1, batch_size=2, lora_rank=2))
    make_checkpoint(tmp_path / "other", "llama", tokenizer_obj, seed=9, max_position_embeddings=256)
    (ckpt / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(hf.CheckpointError, match="SETBLOCK_LORA_BASE"):
        hf.load_model(out)


def test_a_time_limit_stops_with_a_checkpoint_that_resumes(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=256)
    cfg = TrainConfig(steps=3, batch_size=2, checkpoint_every=100)
    out = finetune(ckpt, data, tmp_path / "out", cfg, time_limit=1e-9)
    assert len(losses(out)) == 1 and (out / "checkpoint" / "state.pt").exists()
    assert not (out / "model.safetensors").exists()
    finetune(ckpt, data, out, cfg, resume=True)
    assert len(losses(out)) == 3 and (out / "model.safetensors").exists()


def test_existing_output_without_resume_is_refused(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(ckpt, data, tmp_path / "out", TrainConfig(steps=1))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (TrainConfig(batch_size=6, grad_accum=4), "--batch-size 6 is not a multiple of --grad-accum 4"),
        (TrainConfig(k_min=5, k_max=2), "--k-min 5"),
        (TrainConfig(device="tpu"), "--device tpu"),
        (TrainConfig(lora_rank=-1), "--lora-rank"),
        (TrainConfig(device="cpu", attention="flex"), "no backward pass on CPU"),
        (TrainConfig(ntp_weight=0.0), "--ntp-weight 0.0: must be a finite number above 0"),
        (TrainConfig(objective="ntp", ntp_weight=2.0), "--objective ntp has none"),
    ],
)
def test_options_out_of_range_name_the_option(tmp_path: Path, tokenizer_obj, data: Path, cfg, message: str) -> None:  # noqa: ANN001
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj)
    with pytest.raises(TrainError, match=message):
        finetune(ckpt, data, tmp_path / "out", cfg)


def test_sbd_without_a_mask_token_names_the_option(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, mask=False)
    with pytest.raises(TrainError, match="--add-mask-token"):
        finetune(ckpt, data, tmp_path / "out", TrainConfig(steps=1))


def test_too_long_documents_are_an_error_not_truncated(tmp_path: Path, tokenizer_obj) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=16)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "Question: sort 1 2 3 4 5 6 7 8 9\nAnswer:", "response": " 1 2 3"}) + "\n")
    with pytest.raises(ValueError, match=r"long.jsonl:1: .* exceed the model's 16 positions"):
        finetune(ckpt, long, tmp_path / "out", TrainConfig(steps=1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + '\n\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        finetune(ckpt, bad, tmp_path / "out2", TrainConfig(steps=1))


def _cli(ranks: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*(launcher if ranks > 1 else [sys.executable]), "-m", "setblock_export", "finetune", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_give_the_losses_of_one_and_their_checkpoint_resumes_on_one(
    tmp_path: Path, tokenizer_obj, data: Path, engine: str
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, std=0.02, max_position_embeddings=256)
    common = ["--checkpoint", str(ckpt), "--data", str(data), "--steps", "4", "--batch-size", "4", "--grad-accum", "2"]
    common += ["--lr", "3e-3", "--warmup", "1", "--checkpoint-every", "2", "--seed", "4", "--device", "cpu"]
    if engine == "fsdp":
        common.append("--fsdp")
    _cli(1, *common, "--out", str(tmp_path / "one"))
    _cli(2, *common, "--out", str(tmp_path / "two"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    # a checkpoint written by 2 ranks, resumed by 1 process
    _cli(2, *common, "--out", str(tmp_path / "split"), "--stop-after", "2")
    assert not (tmp_path / "split" / "model.safetensors").exists()
    _cli(1, *common, "--out", str(tmp_path / "split"), "--resume")
    resumed = losses(tmp_path / "split")
    for a, b in zip(one, resumed, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, resumed)
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "two" / "setblock_train.json").read_text())["runs"][-1]["ranks"] == 2


def test_a_stage_from_a_finished_adapter_starts_from_its_weights_and_unseen_data(
    tmp_path: Path, tokenizer_obj, data: Path
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, std=0.05, max_position_embeddings=256)
    first = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup=1, seq_len=256, lora_rank=4, add_mask_token=True)
    one = finetune(ckpt, data, tmp_path / "one", first)
    cursor_one = torch.load(one / "checkpoint" / "state.pt", weights_only=False)["cursor"]
    # a learning rate too small to move a weight: the stage's adapter is the one it started from
    still = TrainConfig(steps=1, batch_size=4, lr=1e-12, warmup=0, seq_len=256, lora_rank=4, add_mask_token=True)
    two = finetune(ckpt, data, tmp_path / "two", still, init_adapter=one)
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-8), k
    # the stage's documents come after the ones the first run laid out
    state = torch.load(two / "checkpoint" / "state.pt", weights_only=False)
    assert state["cursor"] > cursor_one > 0
    runs = json.loads((two / hf.TRAIN_RECORD).read_text())["runs"]
    assert [r["steps"] for r in runs] == [3, 1] and runs[1]["clean_tokens"] > 0
    # a stage stopped early and resumed without the flag still carries the adapter's runs
    longer = TrainConfig(steps=2, batch_size=4, lr=1e-12, warmup=0, seq_len=256, lora_rank=4, add_mask_token=True)
    finetune(ckpt, data, tmp_path / "three", longer, init_adapter=one, stop_after=1)
    three = finetune(ckpt, data, tmp_path / "three", longer, resume=True)
    assert [r["steps"] for r in json.loads((three / hf.TRAIN_RECORD).read_text())["runs"]] == [3, 2]
    with pytest.raises(TrainError, match="--lora-rank 4"):
        finetune(ckpt, data, tmp_path / "x", TrainConfig(steps=1, batch_size=4, lora_rank=8), init_adapter=one)
    with pytest.raises(TrainError, match="not a LoRA adapter"):
        finetune(ckpt, data, tmp_path / "y", still, init_adapter=ckpt)
