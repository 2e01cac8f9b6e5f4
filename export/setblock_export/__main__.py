"""``python -m setblock_export <command>``: the export pipeline's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_tasks(a: argparse.Namespace) -> None:
    from .tasks import make_task_data

    make_task_data(a.out, a.train_per_task, a.test_per_task, a.val_per_task)
    print(f"wrote {a.out}/train.jsonl, val.jsonl, test.jsonl")


def _cmd_mix(a: argparse.Namespace) -> None:
    from .mix import make_mix

    counts = make_mix(a.checkpoint, a.out, a.per_task, a.general_copies, a.max_new_tokens, a.general_answers)
    print(f"wrote {a.out}: {counts}")


def _cmd_init(a: argparse.Namespace) -> None:
    from .init import init_checkpoint

    init_checkpoint(
        a.data,
        a.out,
        vocab_size=a.vocab,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        intermediate=a.intermediate,
        max_positions=a.max_positions,
        seed=a.seed,
        init_std=a.init_std,
    )
    print(f"wrote {a.out}")


def _cmd_finetune(a: argparse.Namespace) -> None:
    import torch

    from .train import TrainConfig, finetune

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = TrainConfig(
        objective=a.objective,
        steps=a.steps,
        batch_size=a.batch_size,
        grad_accum=a.grad_accum,
        lr=a.lr,
        warmup=a.warmup,
        weight_decay=a.weight_decay,
        k_min=a.k_min,
        k_max=a.k_max,
        ntp_weight=a.ntp_weight,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        seq_len=a.seq_len,
        lora_rank=a.lora_rank,
        lora_alpha=a.lora_alpha,
        add_mask_token=a.add_mask_token,
        device=a.device,
        precision="bf16" if a.bf16 else a.precision,
        attention=a.attention,
        fsdp=a.fsdp,
        activation_checkpointing=a.activation_checkpointing,
    )
    limit = a.time_limit * 60 if a.time_limit else None
    finetune(
        a.checkpoint,
        a.data,
        a.out,
        cfg,
        resume=a.resume,
        stop_after=a.stop_after,
        time_limit=limit,
        init_adapter=a.init_adapter,
    )
    print(f"wrote {a.out}")


def _cmd_export(a: argparse.Namespace) -> None:
    from .onnx_export import export_folder

    export_folder(
        a.checkpoint,
        a.out,
        quantize=a.quantize,
        block_sizes=a.block_sizes,
        gammas=a.gammas,
        add_mask_token=a.add_mask_token,
        default_block_size=a.default_block_size,
        int4_accuracy_level=a.int4_accuracy_level,
        int4_block_size=a.int4_block_size,
        merge_products=not a.no_merge_products,
        int8_method=a.int8_method,
        fused_attention=a.fused_attention,
    )
    print(f"wrote {a.out}")


def _cmd_fuse_attention(a: argparse.Namespace) -> None:
    from .fused_attention import fuse_folder

    layers = fuse_folder(a.folder, a.out)
    print(f"wrote {a.out} ({layers} layers' attention fused; kv_layout head-major-shared)")


def _cmd_verify(a: argparse.Namespace) -> None:
    from .verify import verify_folder

    ok = verify_folder(a.folder, a.checkpoint, tolerance=a.tolerance, min_agreement=a.min_agreement, max_kl=a.max_kl)
    if not ok:
        sys.exit(1)


def _cmd_decode(a: argparse.Namespace) -> None:
    import json

    from .decode import Reference

    ref = Reference.load(a.folder, onnx=a.onnx)
    res = ref.generate_text(
        a.prompt, mode=a.mode, block_size=a.block_size, gamma=a.gamma, max_new_tokens=a.max_new_tokens
    )
    print(json.dumps(res, ensure_ascii=False))


def _cmd_golden(a: argparse.Namespace) -> None:
    from .golden import write_golden

    write_golden(a.folder, a.out)
    print(f"wrote {a.out}")


def parser() -> argparse.ArgumentParser:
    """The argument parser (all sub-commands)."""
    p = argparse.ArgumentParser(prog="python -m setblock_export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("tasks", help="write the demo tasks' train/val/test JSONL files")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--train-per-task", type=int, default=20000)
    s.add_argument("--test-per-task", type=int, default=300)
    s.add_argument("--val-per-task", type=int, default=150)
    s.set_defaults(fn=_cmd_tasks)

    s = sub.add_parser("mix", help="a chat model's SBD task mix (demo tasks, extraction, its own answers)")
    s.add_argument("--checkpoint", type=Path, required=True, help="the base model (answers the general prompts)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--per-task", type=int, default=3000, help="training rows per graded task")
    s.add_argument("--general-copies", type=int, default=3, help="times each general answer appears")
    s.add_argument("--max-new-tokens", type=int, default=200, help="limit of the base model's answers")
    s.add_argument("--general-answers", type=Path, default=None, help="reuse a general.jsonl written before")
    s.set_defaults(fn=_cmd_mix)

    s = sub.add_parser("init", help="a from-scratch Llama + BPE tokenizer trained on --data")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--vocab", type=int, default=512)
    s.add_argument("--hidden", type=int, default=256)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--heads", type=int, default=8)
    s.add_argument("--kv-heads", type=int, default=4)
    s.add_argument("--intermediate", type=int, default=688)
    s.add_argument("--max-positions", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--init-std", type=float, default=0.02, help="weight init std (fixtures use a larger one)")
    s.set_defaults(fn=_cmd_init)

    s = sub.add_parser(
        "finetune",
        help="train with the SBD objective (or --objective ntp, the baseline); under torchrun on many ranks",
        description="Fine-tune with the SBD objective. The same command runs on CPU or CUDA, alone or under "
        "`torchrun --nproc-per-node N -m setblock_export finetune ...` (DDP; --fsdp for FSDP2). "
        "See docs/finetuning.md.",
    )
    s.add_argument("--checkpoint", type=Path, required=True, help="HF checkpoint folder or .gguf file to start from")
    s.add_argument("--data", type=Path, required=True, help=".jsonl prompt/response or .txt documents (streamed)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--objective", choices=["sbd", "ntp"], default="sbd")
    s.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    s.add_argument("--batch-size", type=int, default=32, help="rows per optimizer step, over all ranks (global)")
    s.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (splits --batch-size)")
    s.add_argument("--seq-len", type=int, default=0, help="pack documents into rows of this many tokens (0: one a row)")
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--warmup", type=int, default=100)
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--k-min", type=int, default=2)
    s.add_argument("--k-max", type=int, default=16)
    s.add_argument(
        "--ntp-weight",
        type=float,
        default=1.0,
        help="SBD: weight of the clean tokens' NTP loss against the masked slots' (default 1, the paper's loss)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on every linear layer (0: full fine-tuning)")
    s.add_argument("--lora-alpha", type=float, default=0.0, help="LoRA alpha (0: twice the rank)")
    s.add_argument("--add-mask-token", action="store_true", help="add <|mask|> when the model has none")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on CPU (bf16 measured ~15x slower on this CPU at 135M)",
    )
    s.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    s.add_argument(
        "--attention", choices=["auto", "sdpa", "flex"], default="auto", help="auto: FlexAttention on CUDA, SDPA on CPU"
    )
    s.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    s.add_argument("--activation-checkpointing", action="store_true", help="recompute layers in backward (memory)")
    s.add_argument("--checkpoint-every", type=int, default=200)
    s.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    s.add_argument(
        "--time-limit", type=float, default=None, help="minutes: stop with a checkpoint after the step that passes it"
    )
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (its saved settings)")
    s.add_argument(
        "--init-adapter",
        type=Path,
        default=None,
        help="a new stage from a finished LoRA adapter of this base: its weights, a fresh optimizer and this "
        "run's schedule, the data from where its runs stopped",
    )
    s.set_defaults(fn=_cmd_finetune)

    s = sub.add_parser("export", help="HF checkpoint -> SBD model folder (model.onnx + setblock.json)")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--quantize", choices=["none", "int8", "int4"], default="none")
    s.add_argument(
        "--int4-accuracy-level",
        type=int,
        choices=range(5),
        default=None,
        help="int4 and block int8: MatMulNBits compute type; 4 = int8 activations (fastest on CPUs; the "
        "default), 0 = float (the weights' type)",
    )
    s.add_argument(
        "--int4-block-size",
        type=int,
        default=None,
        help="int4 and block int8: weights per quantization scale (default 32)",
    )
    s.add_argument(
        "--int8-method",
        choices=["block", "dynamic"],
        default=None,
        help="int8 (default block): block = 8-bit MatMulNBits (--int4-block-size, --int4-accuracy-level); dynamic = "
        "quantize_dynamic, one scale per tensor (fast, but lossy where activations have outliers)",
    )
    s.add_argument(
        "--no-merge-products",
        action="store_true",
        help="keep Q|K, V, gate and up as separate MatMuls (the graph before the merge, to time against it)",
    )
    s.add_argument(
        "--fused-attention",
        action="store_true",
        help="each layer's attention as ONNX Runtime's GroupQueryAttention, the KV cache written in place "
        "(kv_layout head-major-shared; measured on CPU; docs/model-format.md)",
    )
    s.add_argument("--add-mask-token", action="store_true", help="add <|mask|> when the model has none")
    s.add_argument("--default-block-size", type=int, default=None, help="the runtime's block size for this model")
    s.add_argument("--block-sizes", type=int, nargs="+", default=[2, 16], metavar="K", help="trained range: min max")
    s.add_argument("--gammas", type=float, nargs=2, default=[0.1, 0.35], metavar=("LOW", "HIGH"))
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser(
        "fuse-attention",
        help="an exported folder -> the same model with --fused-attention's graph (no checkpoint needed)",
    )
    s.add_argument("--folder", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=_cmd_fuse_attention)

    s = sub.add_parser("verify", help="compare the ONNX folder with PyTorch")
    s.add_argument("--folder", type=Path, required=True)
    s.add_argument("--checkpoint", type=Path, default=None, help="HF checkpoint (default: the folder's source)")
    s.add_argument("--tolerance", type=float, default=1e-3)
    s.add_argument("--min-agreement", type=float, default=0.9, help="top-1 agreement needed for quantized folders")
    s.add_argument(
        "--max-kl",
        type=float,
        default=0.1,
        help="quantized folders: the largest mean KL divergence (nats) from the reference on the model's own text",
    )
    s.set_defaults(fn=_cmd_verify)

    s = sub.add_parser("decode", help="the reference decoder (NTP, SBD with the EB-Sampler, or verified SBD)")
    s.add_argument("--folder", type=Path, required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--mode", choices=["ntp", "sbd", "sbd_verified"], default="sbd")
    s.add_argument("--block-size", type=int, default=8)
    s.add_argument("--gamma", type=float, default=0.1)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--onnx", action="store_true", help="run the ONNX graph instead of PyTorch")
    s.set_defaults(fn=_cmd_decode)

    s = sub.add_parser("golden", help="write golden decode results for the Rust tests")
    s.add_argument("--folder", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=_cmd_golden)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
