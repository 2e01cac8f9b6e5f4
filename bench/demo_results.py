"""Issue 4's measurement: the paper's Table 1 and Fig. 1 at small scale, decoded by the Rust runtime.

    .venv/bin/python bench/demo_results.py [--limit N]

Runs `setblock bench` on the 300 held-out problems per task (runs/data/test.jsonl, made by
`python -m setblock_export tasks`): the NTP-trained model in NTP mode, the SBD model in NTP mode and
over a gamma sweep; writes docs/results.json, docs/results.png and prints the table. Then the
Python reference decoder cross-checks a subset of the runtime's SBD outputs (tokens and forwards).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = ROOT / "target" / "release" / "setblock"
SWEEP = [0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0, 2.0]


def bench(model: Path, rows: Path, *extra: str) -> list[dict]:
    cmd = [
        str(EXE),
        "bench",
        "--model",
        str(model),
        "--prompts",
        str(rows),
        "--threads",
        "1",
        "--json",
        *extra,
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def split(test: Path, out: Path, limit: int | None) -> dict[str, Path]:
    rows: dict[str, list[str]] = {}
    for line in test.read_text().splitlines():
        rows.setdefault(json.loads(line)["task"], []).append(line)
    files = {}
    for task, lines in rows.items():
        f = out / f"test-{task}.jsonl"
        f.write_text("\n".join(lines[:limit]) + "\n")
        files[task] = f
    return files


def cross_check(model: Path, rows: Path, gamma: float, block: int, n: int) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export.decode import Reference

    ref = Reference.load(model, onnx=True)
    same = 0
    lines = rows.read_text().splitlines()[:n]
    for line in lines:
        q = json.loads(line)["question"]
        cmd = [
            str(EXE),
            "generate",
            "--model",
            str(model),
            "--prompt",
            q,
            "--json",
            "--threads",
            "1",
            "--block-size",
            str(block),
            "--gamma",
            str(gamma),
            "--max-new-tokens",
            "256",
        ]
        rust = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ids = ref.tok.encode(f"Question: {q}\nAnswer:", add_special_tokens=False).ids
        r = ref.sbd(ids, block, gamma, 256)
        same += int(r.tokens == rust["tokens"] and r.forwards == rust["forward_passes"])
    return same, len(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="problems per task (default: all 300)")
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[8, 4], help="the first is the table's")
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "data")
    ap.add_argument("--from-json", action="store_true", help="only redraw the table and plot from docs/results.json")
    a = ap.parse_args()
    if a.from_json:
        out = json.loads((ROOT / "docs" / "results.json").read_text())
        table(out)
        plot(out)
        return
    sbd_model, ntp_model = ROOT / "models" / "demo", ROOT / "models" / "demo-ntp"
    manifest = json.loads((sbd_model / "setblock.json").read_text())
    low, high = manifest["gamma"]["low"], manifest["gamma"]["high"]
    work = ROOT / "runs" / "results"
    work.mkdir(parents=True, exist_ok=True)
    files = split(a.data / "test.jsonl", work, a.limit)
    k0 = a.block_sizes[0]
    out: dict = {"block_size": k0, "gamma_low": low, "gamma_high": high, "tasks": {}}
    gammas = sorted(set(SWEEP + [low, high]))
    for task, f in files.items():
        print(f"== {task}", flush=True)
        ntp = bench(ntp_model, f, "--ntp-only")
        r: dict = {"ntp_trained": ntp[0], "gammas": gammas, "by_block": {}}
        for k in a.block_sizes:
            sbd = bench(sbd_model, f, "--block-size", str(k), "--gammas", ",".join(map(str, gammas)))
            r["by_block"][str(k)] = sbd[1:]
            r.setdefault("sbd_ntp", sbd[0])
        r["sbd"] = r["by_block"][str(k0)]
        out["tasks"][task] = r
        same, n = cross_check(sbd_model, f, low, k0, 20)
        out["tasks"][task]["reference_agreement"] = [same, n]
        print(f"   reference decoder agrees on {same}/{n}", flush=True)
    (ROOT / "docs" / "results.json").write_text(json.dumps(out, indent=1))
    table(out)
    plot(out)


def row_for(rows: list[dict], gammas: list[float], g: float) -> dict:
    return rows[gammas.index(g)]


def table(out: dict) -> None:
    tasks = list(out["tasks"])
    lines = ["| | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]

    def cells(pick) -> str:
        return " | ".join(pick(out["tasks"][t]) for t in tasks)

    lines.append("| NTP-trained, NTP decoding | " + cells(lambda r: f"{r['ntp_trained']['accuracy']:.1f}") + " |")
    lines.append("| SBD-trained, NTP decoding | " + cells(lambda r: f"{r['sbd_ntp']['accuracy']:.1f}") + " |")
    for name, g in (("gamma_low", out["gamma_low"]), ("gamma_high", out["gamma_high"])):

        def fmt(r, g=g) -> str:
            s = row_for(r["sbd"], r["gammas"], g)
            return f"{s['accuracy']:.1f} ({s['forward_reduction_vs_ntp']:.2f}x)"

        lines.append(f"| SBD {name} = {g} | " + cells(fmt) + " |")
    print("\n".join(lines))
    (ROOT / "docs" / "results_table.md").write_text("\n".join(lines) + "\n")


def plot(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(out["tasks"]), figsize=(4.2 * len(out["tasks"]), 3.6), sharey=True)
    for ax, (task, r) in zip(axes, out["tasks"].items(), strict=True):
        for k, rows in r["by_block"].items():
            xs = [s["forward_reduction_vs_ntp"] for s in rows]
            ys = [s["accuracy"] for s in rows]
            ax.plot(xs, ys, "o-", label=f"SBD block {k} (gamma sweep)")
            for x, y, g in zip(xs, ys, r["gammas"], strict=True):
                ax.annotate(f"{g:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.axhline(
            r["sbd_ntp"]["accuracy"],
            color="gray",
            ls="--",
            label="same model, NTP decoding",
        )
        ax.axhline(
            r["ntp_trained"]["accuracy"],
            color="black",
            ls=":",
            label="NTP-trained model",
        )
        ax.set_title(task)
        ax.set_xlabel("forward-pass reduction vs NTP (x)")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Demo model: accuracy vs forward-pass reduction (300 held-out problems per task)")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "results.png", dpi=110)


if __name__ == "__main__":
    main()
