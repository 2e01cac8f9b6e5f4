"""Where a decode step's time goes, by ONNX operator: this runtime's graph against onnxruntime-genai's.

    .venv/bin/python bench/op_profile.py OURS_FOLDER GENAI_FOLDER PROMPTS.jsonl [--limit N] [--rendered]

Both graphs decode the same prompts greedily (NTP, 1 thread) with ONNX Runtime's profiler on:
onnxruntime-genai through its own generator (``enable_profiling`` in its session options, so its
real run is measured: its shared past/present buffer included); this runtime's graph through the
Python reference decoder (export/setblock_export/decode.py), which feeds it exactly as the Rust
runtime does (growing past, one token per step). The prompts and greedy tokens are the same, but
genai's harness also decodes 5 untimed warm-up prompts, so compare the times per run (one forward)
and the shares, not the totals. Prints one JSON object: per system, the run count, the time inside
``model_run`` and per operator type (ms in all, µs per run, share of the kernel time). A profile,
not a speed figure: the profiler adds its own cost to every node (at the 3M demo it inflated a
forward about 20-fold), so only the shares are worth reading.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))


def summarize(profile: Path) -> dict:
    """Runs, ms inside model_run, and ms per operator type, from an ONNX Runtime profile file."""
    events = json.loads(profile.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    ops: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += e["dur"] / 1000
    n, total = max(len(runs), 1), sum(ops.values()) or 1.0
    ordered = sorted(ops.items(), key=lambda kv: -kv[1])
    return {
        "runs": len(runs),
        "model_run_ms": sum(e["dur"] for e in runs) / 1000,
        "op_ms": {k: round(v, 2) for k, v in ordered},
        "op_us_per_run": {k: round(1000 * v / n, 1) for k, v in ordered},
        "op_share": {k: round(v / total, 3) for k, v in ordered},
    }


def genai_profile(folder: Path, prompts: Path, limit: int, rendered: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(folder, copy)
        cfg_path = copy / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["model"]["decoder"]["session_options"]["enable_profiling"] = str(Path(tmp) / "genai")
        cfg_path.write_text(json.dumps(cfg, indent=4))
        cmd = [sys.executable, str(ROOT / "bench" / "genai_run.py"), str(copy), str(prompts), "--limit", str(limit)]
        out = json.loads(
            subprocess.run(
                cmd + (["--rendered"] if rendered else []), check=True, capture_output=True, text=True
            ).stdout
        )
        profile = next(Path(tmp).glob("genai*.json"))
        return {**summarize(profile), "generated_tokens": out["generated_tokens"]}


def ours_profile(folder: Path, prompts: Path, limit: int, rendered: bool) -> dict:
    import onnxruntime as ort
    from setblock_export.decode import OnnxBackend, Reference

    backend = OnnxBackend(folder)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ours")
        backend.sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        ref = Reference(folder, backend)
        rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()][:limit]
        tokens = 0
        for r in rows:
            text = r["rendered"] if rendered else f"Question: {r['question']}\nAnswer:"
            tokens += len(ref.generate_text(text, mode="ntp", block_size=1, gamma=0.0, max_new_tokens=256)["tokens"])
        profile = Path(backend.sess.end_profiling())
        return {**summarize(profile), "generated_tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours", type=Path)
    ap.add_argument("genai", type=Path)
    ap.add_argument("prompts", type=Path)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--rendered", action="store_true", help="each row's rendered field is the prompt, as is")
    a = ap.parse_args()
    res = {
        "onnxruntime-genai": genai_profile(a.genai, a.prompts, a.limit, a.rendered),
        "setblock graph": ours_profile(a.ours, a.prompts, a.limit, a.rendered),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
