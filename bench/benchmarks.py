"""Issue 6's benchmarks: this runtime (NTP, SBD, auto) against onnxruntime-genai, forward cost
curves with the roofline, the runtime's overhead, memory against max context.

    .venv/bin/python bench/benchmarks.py [--quick] [--only SECTION ...]

Sections: head, head-int4, head-wide, head-wide-int4, curves, memory, sbd-large, sbd-wide.

``head-int4``: the same head to head at int4: onnxruntime-genai's own int4 CPU build of the demo
checkpoint against this runtime's int4 export of it (``--quantize int4``, accuracy level 4).

Needs `cargo build --release`, `models/demo` (+ its checkpoint runs/sbd-stage3 for the
onnxruntime-genai builder, or where that is gone its weights rebuilt from models/demo by
bench/onnx_to_checkpoint.py, which this script runs), runs/data/test.jsonl, and for the curves the models of
bench/make_bench_models.py. Writes docs/benchmarks.json and docs/benchmarks.png; every figure is
a ratio measured in one run (systems interleaved), since these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = ROOT / "target" / "release" / "setblock"
OUT = ROOT / "docs" / "benchmarks.json"
BENCH_MODELS = ROOT / "runs" / "bench"


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """stdout and the peak resident memory (KiB) of the child process.

    Measured by GNU time (``/usr/bin/time -f %M``) where it is installed: ``wait4``'s figure is the
    child's high-water mark, which keeps what the child held before ``exec``, a copy of this
    (Python) process: 1,529 MiB for every system once this process had loaded torch."""
    timer = Path("/usr/bin/time")
    full = [str(timer), "-f", "SETBLOCK_MAXRSS_KIB=%M", *cmd] if timer.exists() else cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errf:  # files: a full pipe would block
        p = subprocess.Popen(full, stdout=out, stderr=errf)
        _, status, usage = os.wait4(p.pid, 0)
        errf.seek(0)
        err = errf.read().decode(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
        out.seek(0)
        rss = usage.ru_maxrss
        for line in err.splitlines():
            if line.startswith("SETBLOCK_MAXRSS_KIB="):
                rss = int(line.split("=", 1)[1])
        return out.read().decode(), rss


def bench_cmd(model: Path, prompts: Path, threads: int, *extra: str) -> list[str]:
    """``setblock bench --json`` on ``model`` over ``prompts``."""
    args = ["--model", str(model), "--prompts", str(prompts), "--threads", str(threads), "--json"]
    return [str(EXE), "bench", *args, *extra]


def run_bench(model: Path, prompts: Path, threads: int, *extra: str) -> str:
    """Run :func:`bench_cmd`; its JSON output."""
    return subprocess.run(bench_cmd(model, prompts, threads, *extra), check=True, capture_output=True, text=True).stdout


def prompts_file(n_per_task: int) -> Path:
    rows: dict[str, list[str]] = {}
    for line in (ROOT / "runs" / "data" / "test.jsonl").read_text().splitlines():
        rows.setdefault(json.loads(line)["task"], []).append(line)
    f = Path(tempfile.gettempdir()) / f"setblock-bench-{n_per_task}.jsonl"
    f.write_text("\n".join(line for lines in rows.values() for line in lines[:n_per_task]) + "\n")
    return f


def genai_model(checkpoint: Path, out: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's own export of ``checkpoint`` (its model builder, CPU; ``precision`` fp32
    or int4: its int4 is MatMulNBits, block 32, accuracy level 4 on the CPU, head included).
    Rebuilt when the checkpoint's weights change (``out/.source-sha256``)."""
    stamp = _weights_sha256(checkpoint)
    mark = out / ".source-sha256"
    if not out.exists() or not mark.exists() or mark.read_text() != stamp:
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                str(checkpoint),
                "-o",
                str(out),
                "-p",
                precision,
                "-e",
                "cpu",
                "-c",
                str(BENCH_MODELS / "genai-cache"),
            ],
            check=True,
            capture_output=True,
        )
        mark.write_text(stamp)
    return out


def _weights_sha256(checkpoint: Path) -> str:
    """The sha256 of a checkpoint's weights file (the exporter's own identification of a base)."""
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export import hf

    weights = hf.weights_file(checkpoint)
    if weights is None:
        raise SystemExit(f"{checkpoint}: no model.safetensors to build onnxruntime-genai's model from")
    return hf.sha256(weights)


def demo_checkpoint() -> Path:
    """The demo's training checkpoint (runs/sbd-stage3, from models/make_demo.sh) or, where it is not
    on this machine, its weights rebuilt from models/demo by bench/onnx_to_checkpoint.py."""
    trained = ROOT / "runs" / "sbd-stage3"
    if (trained / "config.json").exists():
        return trained
    rebuilt = ROOT / "runs" / "demo-checkpoint"
    if not (rebuilt / "config.json").exists():
        script = ROOT / "bench" / "onnx_to_checkpoint.py"
        subprocess.run([sys.executable, str(script), str(ROOT / "models" / "demo"), str(rebuilt)], check=True)
    return rebuilt


def demo_int4(level: int = 4) -> Path:
    """This runtime's int4 export of the demo checkpoint (MatMulNBits, block 32, ``level``), verified."""
    out = BENCH_MODELS / ("demo-int4" if level == 4 else f"demo-int4-l{level}")
    if not (out / "setblock.json").exists():
        ckpt = str(demo_checkpoint())
        exp = [sys.executable, "-m", "setblock_export", "export", "--checkpoint", ckpt, "--out", str(out)]
        exp += ["--quantize", "int4", "--int4-accuracy-level", str(level), "--block-sizes", "2", "16"]
        exp += ["--default-block-size", "8", "--gammas", "0.01", "0.05"]
        subprocess.run(exp, check=True, cwd=ROOT / "export")
        ver = [sys.executable, "-m", "setblock_export", "verify", "--folder", str(out), "--checkpoint", ckpt]
        subprocess.run(ver, check=True, cwd=ROOT / "export")
    return out


def head_to_head(
    n_per_task: int,
    rounds: int,
    threads: int,
    checkpoint: Path | None = None,
    genai_dir: Path = BENCH_MODELS / "genai-demo",
    ours: Path = ROOT / "models" / "demo",
    sbd: bool = True,
    precision: str = "fp32",
) -> dict:
    """onnxruntime-genai NTP vs this runtime (NTP, and with ``sbd`` SBD low/high gamma and auto)
    on the same checkpoint: the demo model by default; ``precision`` is genai's build of it."""
    prompts = prompts_file(n_per_task)
    genai_model(checkpoint or demo_checkpoint(), genai_dir, precision)
    ours_cmd = bench_cmd(ours, prompts, threads, "--auto" if sbd else "--ntp-only")
    ntp_cmd = bench_cmd(ours, prompts, threads, "--ntp-only")
    genai_cmd = [
        sys.executable,
        str(ROOT / "bench" / "genai_run.py"),
        str(genai_dir),
        str(prompts),
        "--threads",
        str(threads),
    ]
    runs: dict[str, list] = {"genai": [], "ours": [], "ours_ntp_only": []}
    for _ in range(rounds):  # processes interleaved round by round
        out, rss = run_measured(genai_cmd)
        runs["genai"].append((json.loads(out), rss))
        out, rss = run_measured(ours_cmd)
        runs["ours"].append((json.loads(out), rss))
        if sbd:  # NTP's own process, for its peak memory
            out, rss = run_measured(ntp_cmd)
        runs["ours_ntp_only"].append((json.loads(out), rss))

    # per system: median over rounds of decode tokens/s and TTFT; peak RSS max over rounds
    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    g = runs["genai"]
    systems = [
        {
            "system": "onnxruntime-genai 0.18 (NTP, greedy)",
            "decode_tokens_per_s": med([r[0]["decode_tokens_per_s"] for r in g]),
            "mean_ttft_ms": med([r[0]["mean_ttft_ms"] for r in g]),
            "forward_passes": g[0][0]["forward_passes"],
            "generated_tokens": g[0][0]["generated_tokens"],
            "accuracy": g[0][0]["accuracy"],
            "peak_rss_mib": max(r[1] for r in g) / 1024,
            "all_rounds_tokens_per_s": [r[0]["decode_tokens_per_s"] for r in g],
        }
    ]
    o = runs["ours"]
    for i, row in enumerate(o[0][0]):
        systems.append(
            {
                "system": "setblock " + row["system"],
                "decode_tokens_per_s": med([r[0][i]["decode_tokens_per_s"] for r in o]),
                "predicted_decode_tokens_per_s": row.get("predicted_decode_tokens_per_s"),
                "mean_ttft_ms": med([r[0][i]["mean_ttft_ms"] for r in o]),
                "forward_passes": row["forward_passes"],
                "generated_tokens": row["generated_tokens"],
                "accuracy": row["accuracy"],
                "runtime_overhead_pct": med([r[0][i]["runtime_overhead_pct"] for r in o]),
                "peak_rss_mib": (max(r[1] for r in runs["ours_ntp_only"]) if i == 0 else max(r[1] for r in o)) / 1024,
                "all_rounds_tokens_per_s": [r[0][i]["decode_tokens_per_s"] for r in o],
            }
        )
    return {
        "prompts": 3 * n_per_task,
        "rounds": rounds,
        "threads": threads,
        "genai_precision": precision,
        "ours": str(ours.relative_to(ROOT)),
        "systems": systems,
    }


def curves(reps: int, past: str) -> dict:
    out = {}
    models = {"demo (3M, fp32)": ROOT / "models" / "demo"}
    for name, folder in [
        ("SmolLM2-135M fp32", "smollm2-fp32"),
        ("SmolLM2-135M int8", "smollm2-int8"),
        ("Llama-400M random fp32", "llama400m-fp32"),
        ("Llama-400M random int8", "llama400m-int8"),
    ]:
        if (BENCH_MODELS / folder).exists():
            models[name] = BENCH_MODELS / folder
    for name, folder in models.items():
        print("cost curve:", name, flush=True)
        cmd = [
            str(EXE),
            "bench-forward",
            "--model",
            str(folder),
            "--tokens",
            "1,2,4,8,16,32",
            "--past",
            past,
            "--reps",
            str(reps),
            "--json",
        ]
        out[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out


def memory(model: Path, contexts: list[int]) -> list[dict]:
    """Peak RSS of one process per max_context: a short generation, and one whose prompt fills
    about 85% of the context (the cache is zero-allocated, so only written positions are paid)."""
    rows = []
    for c in contexts:
        info = json.loads(
            subprocess.run(
                [str(EXE), "info", "--model", str(model), "--max-context", str(c), "--json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        row = {
            "max_context": c,
            "kv_budget_mib": info["kv_cache_bytes"] / 2**20,
            "weights_mib": info["weights_bytes"] / 2**20,
        }
        for label, words in (("short", 4), ("filled", int(0.85 * c) - 40)):
            prompt = "hello" + " hello" * (words - 1)
            out, rss = run_measured(
                [
                    str(EXE),
                    "generate",
                    "--model",
                    str(model),
                    "--max-context",
                    str(c),
                    "--prompt",
                    prompt,
                    "--raw",
                    "--max-new-tokens",
                    "32",
                    "--mode",
                    "ntp",
                    "--json",
                    "--threads",
                    "2",
                ]
            )
            row[f"{label}_context_tokens"] = json.loads(out)["prompt_tokens"] + 32
            row[f"{label}_peak_rss_mib"] = rss / 1024
        rows.append(row)
    return rows


def sbd_large(folder: Path, top_s: int, block: int, threads: int) -> list[dict]:
    """NTP vs SBD with a fixed reveal count per forward on a model that is not SBD-trained: the
    text differs, the time is real; the cost-curve prediction column checks the runtime."""
    f = Path(tempfile.gettempdir()) / "setblock-bench-large.jsonl"
    qs = [
        "Write a short story about a robot.",
        "Explain photosynthesis.",
        "List five fruits.",
        "What is the capital of France?",
        "Describe the water cycle.",
        "Give three tips for sleep.",
    ]
    f.write_text("\n".join(json.dumps({"prompt": q}) for q in qs) + "\n")
    extra = ["--selection", "top-s", "--top-s", str(top_s), "--block-size", str(block), "--gammas", "0"]
    return json.loads(run_bench(folder, f, threads, *extra, "--max-new-tokens", "64", "--repeat", "2"))


def sbd_wide(folder: Path, n_per_task: int, threads: int) -> list[dict]:
    """NTP, SBD and auto on the demo's function at 110M parameters (``demo-wide-*``, see
    bench/make_bench_models.py): the same prompts and checks as the head to head, on a model whose
    forwards are memory-heavy; one process, systems interleaved prompt by prompt."""
    return json.loads(run_bench(folder, prompts_file(n_per_task), threads, "--auto"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and reps (a smoke run)")
    sections = ["head", "head-int4", "head-wide", "head-wide-int4", "curves", "memory", "sbd-large", "sbd-wide"]
    ap.add_argument("--only", nargs="+", default=sections, choices=sections)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    res = json.loads(OUT.read_text()) if OUT.exists() else {}

    def save() -> None:  # after each section, so a failure later keeps what was measured
        OUT.write_text(json.dumps(res, indent=1))

    if "head" in a.only:
        res["head_to_head"] = head_to_head(10 if a.quick else 100, 1 if a.quick else 3, a.threads)
        save()
    if "head-int4" in a.only:
        res["head_to_head_int4"] = head_to_head(
            10 if a.quick else 100,
            1 if a.quick else 3,
            a.threads,
            genai_dir=BENCH_MODELS / "genai-demo-int4",
            ours=demo_int4(),
            precision="int4",
        )
        save()
    if "curves" in a.only:
        res["cost_curves"] = curves(3 if a.quick else 10, "0,128,384")  # the demo holds 512 positions
        save()
    if "memory" in a.only and (BENCH_MODELS / "smollm2-fp32").exists():
        res["memory"] = memory(BENCH_MODELS / "smollm2-fp32", [512, 1024, 2048, 4096])
        save()
    if "sbd-large" in a.only:
        res["sbd_large"] = {}
        # SmolLM2's <|mask|> row is untrained: its forced SBD text hits EOS at once, so its
        # timings would not compare like for like with NTP; the random 400M has no such stop
        for name in ("llama400m-int8",):
            if (BENCH_MODELS / name).exists():
                res["sbd_large"][name] = {s: sbd_large(BENCH_MODELS / name, s, 8, 2) for s in (2, 4)}
        save()
    # demo-wide against genai's build of the same checkpoint: fp32 (NTP only) and int4 (with SBD, auto)
    for precision, sbd in (("fp32", False), ("int4", True)):
        suffix = "" if precision == "fp32" else "-int4"
        ours = BENCH_MODELS / f"demo-wide-{precision}"
        if f"head-wide{suffix}" in a.only and ours.exists():
            res[f"head_to_head_wide{suffix.replace('-', '_')}"] = head_to_head(
                5 if a.quick else 30,
                1 if a.quick else 3,
                a.threads,
                BENCH_MODELS / "demo-wide-ckpt",
                BENCH_MODELS / f"genai-demo-wide{suffix}",
                ours,
                sbd=sbd,
                precision=precision,
            )
            save()
    if "sbd-wide" in a.only:
        res["sbd_wide"] = {}
        for name in ("demo-wide-int8", "demo-wide-fp32", "demo-wide-int4"):
            if (BENCH_MODELS / name).exists():
                res["sbd_wide"][name] = sbd_wide(BENCH_MODELS / name, 5 if a.quick else 30, 2)
                save()
    save()
    print("wrote", OUT)
    plot(res)


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    if "head_to_head" in res:
        s = res["head_to_head"]["systems"]
        ax = axes[0]
        ax.barh([x["system"] for x in s], [x["decode_tokens_per_s"] for x in s], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("decode tokens/s (demo model, 1 thread)")
        ax.set_title("Tokens/s per system")
    if "cost_curves" in res:
        ax = axes[1]
        for name, c in res["cost_curves"].items():
            r = [x for x in c["points"] if x["past"] == 128]
            ax.plot([x["tokens"] for x in r], [x["ratio_to_one_token"] for x in r], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in the forward (128 cached positions)")
        ax.set_ylabel("t(n) / t(1)")
        ax.set_title("Forward cost against tokens per forward")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "benchmarks.png", dpi=110)


if __name__ == "__main__":
    main()
