"""What loading a model folder costs in resident memory, and what each way of storing it does.

    .venv/bin/python bench/load_memory.py runs/bench/smollm2-fp32 [--runs 5] [--threads 2]

Each variant is loaded by ONNX Runtime (the Python API, the same library as the runtime's) in a
fresh process, ``--runs`` times: resident memory right after loading and after the forwards, the
process's peak, and the median time of a 1-token and a 16-token forward on 128 cached positions
(mapped weights become resident as they are read, so compare after the forwards). Variants:

- ``external``: the folder as exported (weights in ``model.onnx.data``, mapped by ONNX Runtime);
- ``single-file``: the same graph re-saved with its weights inside ``model.onnx`` (older exports);
- ``single-file+trim``: that, with glibc's ``malloc_trim(0)`` after loading;
- ``external, no prepacking``: ``session.disable_prepacking`` (no packed copy of the weights).

Prints one JSON object (per variant: every run, and medians). Used for docs/benchmarks.md section 5
and the numbers in docs/model-format.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ["external", "single-file", "single-file+trim", "external, no prepacking"]


def status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (this process image's peak; unlike getrusage's
    maxrss it does not inherit the parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def feeds(m: dict, n: int, past: int) -> dict[str, np.ndarray]:
    """Inputs of one forward of ``n`` tokens on ``past`` zero-filled cached positions."""
    f = {
        "input_ids": np.full((1, n), 5, np.int64),
        "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
        "attention_mask": np.zeros((1, 1, n, past + n), np.float32),
    }
    if m["io"].get("logits_index"):
        f[m["io"]["logits_index"]] = np.arange(n, dtype=np.int64)[-max(1, n // 2) :]
    kv = m["num_kv_heads"] * m["head_dim"]
    shape = (1, past, kv) if m["kv_layout"] == "sequence-major-packed" else (1, past, m["num_kv_heads"], m["head_dim"])
    for layer in range(m["num_layers"]):
        for name in (m["io"]["past_key"], m["io"]["past_value"]):
            f[name % layer] = np.zeros(shape, np.float32)
    return f


def child(folder: Path, variant: str, threads: int) -> dict:
    """One load and a few forwards, in this (fresh) process."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if "no prepacking" in variant:
        so.add_session_config_entry("session.disable_prepacking", "1")
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    if "trim" in variant:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    after_load = status_mib("VmRSS")
    m = json.loads((folder / "setblock.json").read_text())
    out = {"rss_after_load_mib": after_load}
    for n in (1, 16):
        f = feeds(m, n, 128)
        times = []
        for rep in range(9):
            t0 = time.perf_counter()
            sess.run(None, f)
            if rep >= 2:
                times.append(time.perf_counter() - t0)
        out[f"forward_{n}_ms"] = float(np.median(times)) * 1e3
    out["rss_after_forwards_mib"] = status_mib("VmRSS")
    out["peak_rss_mib"] = status_mib("VmHWM")
    return out


def single_file_copy(folder: Path, dest: Path) -> Path:
    """``folder`` with its graph re-saved as one file (weights inside the protobuf)."""
    import onnx

    dest.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, dest / f.name)
    onnx.save(onnx.load(str(folder / "model.onnx")), str(dest / "model.onnx"))
    m = json.loads((dest / "setblock.json").read_text())
    m["files"].pop("weights", None)
    (dest / "setblock.json").write_text(json.dumps(m, indent=2))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.folder, a.child, a.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        single = single_file_copy(a.folder, Path(tmp) / "single")
        res: dict[str, dict] = {}
        for _ in range(a.runs):  # variants interleaved run by run
            for v in VARIANTS:
                folder = single if v.startswith("single") else a.folder
                cmd = [sys.executable, __file__, str(folder), "--child", v, "--threads", str(a.threads)]
                out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                res.setdefault(v, {"runs": []})["runs"].append(out)
    for r in res.values():
        for key in r["runs"][0]:
            r[f"median_{key}"] = float(np.median([x[key] for x in r["runs"]]))
    print(json.dumps({"folder": str(a.folder), "threads": a.threads, "variants": res}, indent=1))


if __name__ == "__main__":
    main()
