"""`export --fused-attention` against the standard graph and onnxruntime-genai, NTP, interleaved.

    .venv/bin/python bench/fused_attention.py demo --precision fp32    # models/demo (3M), 1 thread
    .venv/bin/python bench/fused_attention.py demo --precision int4    # bench/benchmarks.py's demo int4
    .venv/bin/python bench/fused_attention.py smollm2                  # SmolLM2-135M-SBD int4, 2 threads
    .venv/bin/python bench/fused_attention.py demo-wide                # 110M int4 (bench/make_bench_models.py)

Per round, in turn (the order reversed every other round, so drift hits all three alike):
onnxruntime-genai's own build of the same weights (`bench/genai_run.py`), this runtime on the
standard folder and on its `fuse-attention` twin (`setblock bench --ntp-only`). Prints each
system's decode tokens/s per round and the medians' ratios to genai; writes
docs/fused_attention.json (one entry per model and precision, kept across runs). The fused folder
is rebuilt from the standard one every run (`python -m setblock_export fuse-attention`).

Needs `cargo build --release` and onnxruntime-genai 0.18.0 in .venv (docs/benchmarks.md); for
`smollm2`, `QUANT=int4 scripts/smollm2-sbd.sh`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmarks as b  # noqa: E402

OUT = b.ROOT / "docs" / "fused_attention.json"


def fuse(folder: Path, out: Path) -> Path:
    """``out``: ``folder`` through ``fuse-attention``, made anew."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "setblock_export", "fuse-attention", "--folder", str(folder), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=b.ROOT / "export")
    return out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def three_way(cmds: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """Each system's rounds (decode tokens/s, TTFT, accuracy, forwards, peak RSS) and medians."""
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    order = list(cmds)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            out, rss = b.run_measured(cmds[name])
            j = json.loads(out)
            row = j[0] if isinstance(j, list) else j
            runs[name].append(
                {
                    "decode_tokens_per_s": row["decode_tokens_per_s"],
                    "mean_ttft_ms": row["mean_ttft_ms"],
                    "accuracy": row.get("accuracy"),
                    "forward_passes": row["forward_passes"],
                    "peak_rss_mib": rss / 1024,
                }
            )
            print(f"round {r}: {name} {runs[name][-1]['decode_tokens_per_s']:.1f} tokens/s", flush=True)
    genai = median([x["decode_tokens_per_s"] for x in runs["genai"]])
    summary = {}
    for name, rs in runs.items():
        tps = median([x["decode_tokens_per_s"] for x in rs])
        summary[name] = {
            "decode_tokens_per_s": tps,
            "rounds": [x["decode_tokens_per_s"] for x in rs],
            "vs_genai": tps / genai,
            "mean_ttft_ms": median([x["mean_ttft_ms"] for x in rs]),
            "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
            "accuracy": rs[0]["accuracy"],
            "forward_passes": rs[0]["forward_passes"],
        }
        print(f"{name}: {tps:.1f} tokens/s, {tps / genai:.3f}x genai, rounds {summary[name]['rounds']}")
    return summary


def ntp_cmds(genai_dir: Path, ours: Path, fused: Path, prompts: Path, threads: int, *genai_extra: str) -> dict:
    """The three systems' commands: genai's harness, and `setblock bench --ntp-only` on both folders."""
    genai = [sys.executable, str(b.ROOT / "bench" / "genai_run.py"), str(genai_dir), str(prompts)]
    return {
        "genai": [*genai, "--threads", str(threads), *genai_extra],
        "standard": b.bench_cmd(ours, prompts, threads, "--ntp-only"),
        "fused": b.bench_cmd(fused, prompts, threads, "--ntp-only"),
    }


def demo(precision: str, per_task: int, rounds: int) -> tuple[str, dict]:
    ours = b.ROOT / "models" / "demo" if precision == "fp32" else b.demo_int4()
    fused = fuse(ours, b.BENCH_MODELS / f"demo-{precision}-fused")
    genai_dir = b.BENCH_MODELS / ("genai-demo" if precision == "fp32" else "genai-demo-int4")
    b.genai_model(b.demo_checkpoint(), genai_dir, precision)
    cmds = ntp_cmds(genai_dir, ours, fused, b.prompts_file(per_task), 1)
    return f"demo-{precision}", {"prompts": 3 * per_task, "threads": 1, "systems": three_way(cmds, rounds)}


def demo_wide(per_task: int, rounds: int) -> tuple[str, dict]:
    """The demo's function in a SmolLM2-sized network, int4 (`bench/make_bench_models.py --only demo-wide`)."""
    ours = b.BENCH_MODELS / "demo-wide-int4"
    if not (ours / "setblock.json").exists():
        raise SystemExit(f"{ours} is not built: run .venv/bin/python bench/make_bench_models.py --only demo-wide")
    fused = fuse(ours, b.BENCH_MODELS / "demo-wide-int4-fused")
    genai_dir = b.genai_model(b.BENCH_MODELS / "demo-wide-ckpt", b.BENCH_MODELS / "genai-demo-wide-int4", "int4")
    cmds = ntp_cmds(genai_dir, ours, fused, b.prompts_file(per_task), 1)
    return "demo-wide-int4", {"prompts": 3 * per_task, "threads": 1, "systems": three_way(cmds, rounds)}


def smollm2(per_task: int, rounds: int) -> tuple[str, dict]:
    import smollm2_results as s

    ours = s.SBD / "int4"
    if not (ours / "setblock.json").exists():
        raise SystemExit(f"{ours} is not built: run QUANT=int4 scripts/smollm2-sbd.sh")
    fused = fuse(ours, b.BENCH_MODELS / "smollm2-int4-fused")
    genai_dir = b.genai_model(s.merged_checkpoint("sbd"), s.WORK / "genai-sbd-int4", "int4")
    rows: list[str] = []
    for f in s.prompt_files(per_task).values():
        rows += f.read_text().splitlines()
    prompts = s.WORK / f"fused-{per_task}.jsonl"
    prompts.write_text("\n".join(rows) + "\n")
    cmds = ntp_cmds(genai_dir, ours, fused, prompts, 2, "--rendered")
    return "smollm2-135m-sbd-int4", {"prompts": len(rows), "threads": 2, "systems": three_way(cmds, rounds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["demo", "demo-wide", "smollm2"])
    ap.add_argument("--precision", choices=["fp32", "int4"], default="int4", help="demo only (smollm2: int4)")
    ap.add_argument("--per-task", type=int, default=None, help="prompts per task (demo 100, demo-wide 30, smollm2 10)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.model == "demo":
        key, res = demo(a.precision, a.per_task or 100, a.rounds)
    elif a.model == "demo-wide":
        key, res = demo_wide(a.per_task or 30, a.rounds)
    else:
        key, res = smollm2(a.per_task or 10, a.rounds)
    all_res = json.loads(OUT.read_text()) if OUT.exists() else {}
    all_res[key] = res
    OUT.write_text(json.dumps(all_res, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
