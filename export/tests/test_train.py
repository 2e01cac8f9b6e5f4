"""finetune: both objectives run, lower the loss, and resume bit for bit after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint
from safetensors.torch import load_file

from setblock_export.tasks import make_task_data
from setblock_export.train import TrainConfig, finetune


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    make_task_data(d, train_per_task=40, test_per_task=5, val_per_task=5)
    return d / "train.jsonl"


@pytest.mark.parametrize("objective", ["sbd", "ntp"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, tokenizer_obj, data: Path, objective) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, std=0.02, max_position_embeddings=256)
    cfg = TrainConfig(objective=objective, steps=6, batch_size=4, lr=3e-3, warmup=2, checkpoint_every=3, seed=5)
    finetune(ckpt, data, tmp_path / "full", cfg)
    finetune(ckpt, data, tmp_path / "crashed", cfg, stop_after=3)  # "crash" after the step-3 checkpoint
    assert not (tmp_path / "crashed" / "model.safetensors").exists()
    finetune(ckpt, data, tmp_path / "crashed", cfg, resume=True)
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    prov = json.loads((tmp_path / "full" / "setblock_train.json").read_text())
    assert prov["runs"][-1]["objective"] == objective and prov["runs"][-1]["steps"] == 6


def test_existing_output_without_resume_is_refused(tmp_path: Path, tokenizer_obj, data: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(ckpt, data, tmp_path / "out", TrainConfig(steps=1))


def test_too_long_documents_are_an_error_not_truncated(tmp_path: Path, tokenizer_obj) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", tokenizer_obj, max_position_embeddings=16)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "Question: sort 1 2 3 4 5 6 7 8 9\nAnswer:", "response": " 1 2 3"}) + "\n")
    with pytest.raises(ValueError, match="exceed the model's 16 positions"):
        finetune(ckpt, long, tmp_path / "out", TrainConfig(steps=1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        finetune(ckpt, bad, tmp_path / "out2", TrainConfig(steps=1))
