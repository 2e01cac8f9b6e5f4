"""Fine-tuning throughput of `python -m setblock_export finetune` on this machine (docs/finetuning.md).

Clean tokens per second (the documents' own tokens; the SBD layout adds a noisy copy of each
response, which costs compute but is not counted) for three model sizes, full fine-tuning and
LoRA r16, fp32 and bf16 autocast, one process and two ranks (torchrun, gloo, DDP). Each run is a
real `finetune` command on the demo tasks (SBD objective, unpacked rows); the first step is a
warm-up and is not counted. Writes docs/finetune_throughput.json and prints the table.

    .venv/bin/python bench/finetune_throughput.py            # everything (about 25 minutes here)
    .venv/bin/python bench/finetune_throughput.py --only demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-finetune"
PY = sys.executable

# name -> (how to get the checkpoint, steps per fp32 run, steps per bf16 run)
MODELS = {
    "demo (3M)": (
        "init",
        ["--hidden", "256", "--layers", "4", "--heads", "8", "--kv-heads", "4", "--intermediate", "688"],
    ),
    "20M": ("init", ["--hidden", "512", "--layers", "8", "--heads", "8", "--kv-heads", "4", "--intermediate", "1376"]),
    "SmolLM2-135M": ("gguf", []),
}
# (steps, rows a step) for fp32 and for bf16: bf16 autocast is so slow on this CPU (about 110 s a step
# of 8 rows at 20M) that SmolLM2's bf16 runs take 2 rows a step to finish in minutes
PLAN = {
    "demo (3M)": ((8, 8), (4, 8)),
    "20M": ((5, 8), (3, 8)),
    "SmolLM2-135M": ((3, 8), (2, 2)),
}
VARIANTS = [  # (fine-tuning, precision, ranks)
    ("full", "fp32", 1),
    ("full", "bf16", 1),
    ("lora r16", "fp32", 1),
    ("lora r16", "bf16", 1),
    ("full", "fp32", 2),
    ("lora r16", "fp32", 2),
]


def run(cmd: list[str], env: dict | None = None) -> None:
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")


def checkpoint(name: str, data: Path) -> Path:
    how, args = MODELS[name]
    if how == "gguf":
        out = subprocess.run([str(ROOT / "scripts" / "fetch-smollm2.sh")], capture_output=True, text=True, check=True)
        return ROOT / out.stdout.strip().splitlines()[-1]
    d = WORK / ("model-" + name.split()[0].lower())
    if not (d / "config.json").exists():
        run([PY, "-m", "setblock_export", "init", "--data", str(data), "--out", str(d), *args])
    return d


def measure(ckpt: Path, data: Path, mode: str, precision: str, ranks: int, plan: tuple[int, int], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    steps, rows = plan
    args = ["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--steps", str(steps)]
    args += ["--batch-size", str(rows), "--lr", "1e-4", "--warmup", "1", "--seed", "0", "--checkpoint-every", "1000"]
    args += ["--device", "cpu", "--precision", precision]
    if ckpt.suffix == ".gguf":
        args.append("--add-mask-token")
    if mode.startswith("lora"):
        args += ["--lora-rank", "16"]
    env = dict(os.environ)
    if ranks == 1:
        cmd = [PY, "-m", "setblock_export", *args, "--threads", "2"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        cmd += ["-m", "setblock_export", *args]
    run(cmd, env)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # first: warm-up
    tokens, seconds = sum(r["clean_tokens"] for r in recs), sum(r["seconds"] for r in recs)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "rows_a_step": rows,
        "measured_steps": len(recs),
        "clean_tokens": tokens,
        "seconds": round(seconds, 2),
        "clean_tokens_per_s": round(tokens / seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["demo", "20M", "SmolLM2"], default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "finetune_throughput.json")
    p.add_argument("--table", action="store_true", help="only re-render the table from --out into the docs")
    a = p.parse_args()
    if a.table:
        write_table(a.out)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    data_dir = WORK / "data"
    if not (data_dir / "train.jsonl").exists():
        run([PY, "-m", "setblock_export", "tasks", "--out", str(data_dir), "--train-per-task", "300"])
    data = data_dir / "train.jsonl"
    old = json.loads(a.out.read_text())["results"] if a.only and a.out.exists() else []
    results = []
    for name in MODELS:
        if a.only and not name.startswith(a.only):
            continue
        ckpt = checkpoint(name, data)
        for mode, precision, ranks in VARIANTS:
            r = measure(ckpt, data, mode, precision, ranks, PLAN[name][precision == "bf16"], WORK / "run")
            row = {"model": name, "fine_tuning": mode, "precision": precision, "ranks": ranks, **r}
            results.append(row)
            print(json.dumps(row), flush=True)
    done = {r["model"] for r in results}
    results = [r for r in old if r["model"] not in done] + results  # --only: the other models' rows stay
    results.sort(key=lambda r: list(MODELS).index(r["model"]))
    report = {
        "command": "python bench/finetune_throughput.py (--only MODEL reruns one model's rows)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "setup": "SBD objective, one demo-task document a row (rows_a_step rows), k in 2..16, CPU; "
        "1 rank = 1 process with 2 threads, 2 ranks = torchrun gloo DDP with 1 thread each; "
        "the first step is a warm-up, not counted",
        "results": results,
    }
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    write_table(a.out)


def table(report: dict) -> str:
    """The markdown table of a report, with the fp32 single-process row of each model as 1.00x."""
    lines = [
        "| model | fine-tuning | precision | ranks | rows a step | clean tokens/s | vs full fp32, 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        base = next(
            b["clean_tokens_per_s"]
            for b in report["results"]
            if b["model"] == r["model"] and b["fine_tuning"] == "full" and b["precision"] == "fp32" and b["ranks"] == 1
        )
        cells = [r["model"], r["fine_tuning"], r["precision"], r["ranks"], r["rows_a_step"], r["clean_tokens_per_s"]]
        lines.append("| " + " | ".join(map(str, cells)) + f" | {r['clean_tokens_per_s'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def write_table(report_path: Path) -> None:
    """Print the table and put it into docs/finetuning.md between its markers."""
    text = table(json.loads(report_path.read_text()))
    print(text)
    doc = ROOT / "docs" / "finetuning.md"
    begin, end = "<!-- throughput table: bench/finetune_throughput.py -->\n", "<!-- end of table -->\n"
    body = doc.read_text()
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        doc.write_text(head + begin + text + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
