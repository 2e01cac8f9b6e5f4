"""Issue 12's measurement: SmolLM2-135M-Instruct turned into an SBD model, against its NTP twin.

    .venv/bin/python bench/smollm2_results.py [SECTION ...] [--limit N]

Sections (each saves into docs/results-smollm2.json as it ends, so a later one failing keeps the
earlier ones; ``report`` only redraws docs/results-smollm2.md and the plot from that file):

- ``table``: the paper's Table 1 on the held-out problems of every trained task (300 each:
  gsm, trace, sort, extract; runs/smollm2/mix/test.jsonl), decoded by ``setblock bench`` on the
  fp32 folders (``--folder``): the NTP twin with NTP decoding, the SBD model with NTP decoding and at the
  manifest's gamma low and high. Accuracy and forwards do not depend on machine load, so the two
  models run side by side, one thread each.
- ``sweep``: the gamma sweep of the SBD model (the first ``--sweep-limit`` problems per task), for
  the accuracy-against-forwards plot (docs/results-smollm2.png).
- ``sweep-ltr``: the same sweep with the slots taken left to right (``--selection eb-left-to-right``)
  instead of in entropy order, on the first ``--ltr-limit`` problems per task: whether the order of
  reveals or the model's multi-slot predictions limit SBD's accuracy.
- ``sweep-verified``: verified SBD (``--verify``, docs/sbd-verified.md) over gammas and block sizes 8
  and 16 on the first ``--verified-limit`` problems per task: its accuracy is NTP decoding's by
  construction, so this finds the setting with the fewest forwards.
- ``reference``: the Python reference decoder (export/setblock_export/decode.py, ONNX backend) on a
  sample, from the prompt as the training mix rendered it, against ``setblock generate`` from the
  user text through the model's chat template: same tokens and forwards, for SBD at gamma low and
  for verified SBD at its default.
- ``speed``: decode tokens/s of NTP, SBD and ``auto``, plain and verified (at the manifest's gammas
  and at 1000, a whole block a forward), on the same model and prompts, interleaved
  prompt by prompt (``setblock bench --repeat``), on the fp32 folder (and int8 where built), 2 threads; and
  onnxruntime-genai's NTP on the merged fp32 weights (its own model builder), processes
  interleaved round by round.
- ``ppl``: perplexity of the base model, the NTP twin and the SBD model on held-out general text:
  Ambrose Bierce's *The Devil's Dictionary* (1911, public domain), from Debian's ``dict-devil``
  package (fetched with ``apt-get download``), never in the training mix.
- ``ppl-candidates``: the same perplexity for the adapter folders named by ``--adapters`` (a later
  stage or another recipe, not the shipped ones), kept in the results file, not in the report.
- ``table-candidates``: Table 1's SBD rows for the adapters named by ``--adapters``: each exported
  once to an fp32 folder under runs/smollm2-results/candidates/ (kept while its weights are the
  same), then its NTP decoding and SBD at its gamma low on the same held-out problems (``--limit``),
  kept under ``table_candidates``, not in the report (the model card quotes them).
- ``extract-schema``: the extract task's held-out problems (``--limit``) decoded under the task's JSON
  schema (bench/extract.schema.json, also examples/structured.rs's): NTP + grammar and SBD + grammar
  at the manifest's gammas, plain and verified, beside Table 1's unconstrained extract rows
  (docs/structured-output.md).
- ``general``: the 47 held-out general instructions (runs/smollm2/mix/general_test.jsonl): SBD's
  tokens per forward, and how often its greedy output equals the same model's NTP greedy output;
  the same for verified SBD.

Prerequisites: models/make_smollm2.sh (the adapters), scripts/smollm2-sbd.sh and
``ADAPTER=ntp scripts/smollm2-sbd.sh`` (the folders), ``cargo build --release``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks import genai_model, run_bench, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXE = ROOT / "target" / "release" / "setblock"
OUT = ROOT / "docs" / "results-smollm2.json"
MIX = ROOT / "runs" / "smollm2" / "mix"
WORK = ROOT / "runs" / "smollm2-results"
SBD = ROOT / "models" / "smollm2-135m-sbd"
NTP = ROOT / "models" / "smollm2-135m-ntp"
ADAPTERS = SBD / "adapters"
SWEEP = [0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0, 2.0]
SECTIONS = [
    "table",
    "sweep",
    "sweep-ltr",
    "sweep-verified",
    "reference",
    "speed",
    "ppl",
    "ppl-candidates",
    "table-candidates",
    "general",
    "extract-schema",
    "report",
]
EXTRACT_SCHEMA = ROOT / "bench" / "extract.schema.json"
BLOCK = 8
# The folder the accuracy figures use: fp32 (the reference); `--folder int8` decodes the int8 folder
# that scripts/smollm2-sbd.sh builds beside it.
FOLDER = "fp32"


# the results file's key(s) each section writes
KEYS = {
    "table": ["table"],
    "sweep": ["sweep"],
    "sweep-ltr": ["sweep_left_to_right", "sweep_entropy_paired"],
    "sweep-verified": ["sweep_verified"],
    "reference": ["reference"],
    "speed": ["speed"],
    "ppl": ["ppl"],
    "general": ["general"],
    "extract-schema": ["extract_schema"],
}


@functools.cache
def adapter_dir(name: str) -> Path:
    """A run's committed adapter: its last stage's (``adapters/sbd``, ``adapters/ntp``), or while that
    stage is still training (models/make_smollm2.sh) its newest finished one, as
    scripts/smollm2-sbd.sh builds the folders from."""
    for d in (ADAPTERS / name, ADAPTERS / f"{name}-stage2", ADAPTERS / f"{name}-stage1"):
        if (d / "adapter_model.safetensors").exists():
            return d
    raise SystemExit(f"no adapter for {name} under {ADAPTERS}: models/make_smollm2.sh trains it")


def adapter_sha(name: str) -> str:
    """sha256 of a committed adapter's weights (the stamp scripts/smollm2-sbd.sh gives its folders)."""
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export import hf

    return hf.sha256(adapter_dir(name) / "adapter_model.safetensors")


# the models whose figures a results key holds (the others are the SBD model's alone)
TWIN_KEYS = ("table", "ppl")


def models_of(key: str) -> tuple[str, ...]:
    return ("sbd", "ntp") if key in TWIN_KEYS else ("sbd",)


def weights(key: str) -> dict[str, str]:
    """The adapters a results key measured (first 12 hex digits of their sha256), saved with its
    figures so the report says which training stage every section is from."""
    return {name: adapter_sha(name)[:12] for name in models_of(key)}


def check_folders() -> None:
    """Refuses folders built from another adapter than the committed one (a retrained adapter
    measured through a stale export would publish the old stage's figures under the new name)."""
    for dest, name in ((SBD, "sbd"), (NTP, "ntp")):
        for folder in ("fp32", "int8", "int4"):
            # .built-from-adapter: written at export, so a folder that failed verify (int4) has one too
            stamps = [dest / folder / f for f in (".built-from-adapter", ".adapter-sha256")]
            stamp = next((f for f in stamps if f.exists()), None)
            if stamp is not None and stamp.read_text().strip() != adapter_sha(name):
                raise SystemExit(
                    f"{dest / folder} was built from another adapter than {adapter_dir(name)}: "
                    f"run {'ADAPTER=ntp ' if name == 'ntp' else ''}scripts/smollm2-sbd.sh (QUANT=... for int8/int4)"
                )


def prompt_files(limit: int | None) -> dict[str, Path]:
    """Per task, a ``setblock bench`` file: the user text (the CLI applies the chat template), the
    answer, the grade (``json`` for extract), and the rendered prompt for other harnesses."""
    WORK.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {}
    for line in (MIX / "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        row = {"question": r["user"], "answer": r["answer"], "task": r["task"], "rendered": r["prompt"]}
        if r["task"] == "extract":
            row["grade"] = "json"
        rows.setdefault(r["task"], []).append(json.dumps(row))
    files = {}
    for task, lines in rows.items():
        f = WORK / f"test-{task}-{limit or 'all'}.jsonl"
        f.write_text("\n".join(lines[:limit]) + "\n")
        files[task] = f
    return files


def gammas() -> tuple[float, float]:
    g = json.loads((SBD / FOLDER / "setblock.json").read_text())["gamma"]
    return g["low"], g["high"]


def bench(model: Path, prompts: Path, threads: int, *extra: str) -> list[dict]:
    return json.loads(run_bench(model, prompts, threads, *extra))


def kept_rows(res: dict, model: str, files: dict[str, Path], low: float, high: float) -> dict[str, dict]:
    """The table rows of ``model`` (``sbd`` or ``ntp``) from the results file, per task, for a table run
    that decodes only the other model: refused unless they were measured on the committed adapter,
    the same problems and gammas."""
    old = res.get("table")
    if old is None:
        raise SystemExit(f"table --table-models: no earlier table to keep {model}'s rows from; run both")
    why = []
    if old.get("weights", {}).get(model) != adapter_sha(model)[:12]:
        why.append(f"its {model} adapter is not the committed one")
    if (old["gamma_low"], old["gamma_high"], old["block_size"], old["folder"]) != (low, high, BLOCK, FOLDER):
        why.append("its gammas, block size or folder differ")
    for task, f in files.items():
        n = sum(1 for line in f.read_text().splitlines() if line.strip())
        if old["tasks"].get(task, {}).get("problems") != n:
            why.append(f"it has not {n} {task} problems")
    if why:
        raise SystemExit(f"table --table-models: cannot keep {model}'s rows ({'; '.join(why)}): rerun them")
    keys = ["sbd_ntp", "sbd", "sbd_verified"] if model == "sbd" else ["ntp_twin"]
    return {task: {k: old["tasks"][task][k] for k in keys} for task in files}


def _weighted(weights: list, values: list) -> float:
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def merge_rows(rows: tuple[dict, ...]) -> dict:
    """One system's ``setblock bench`` results on disjoint prompt sets, as one run over all of them:
    counts summed, rates of tokens over time as tokens over the summed times, means weighted."""
    n = sum(r["prompts"] for r in rows)
    tokens = sum(r["generated_tokens"] for r in rows)
    forwards = sum(r["forward_passes"] for r in rows)
    ntp_forwards = sum(r["forward_reduction_vs_ntp"] * r["forward_passes"] for r in rows)
    seconds = [r["generated_tokens"] / r["decode_tokens_per_s"] for r in rows]
    prompts = [r["prompts"] for r in rows]

    def rate(key: str) -> float | None:
        values = [r[key] for r in rows]
        if None in values:
            return None
        return tokens / sum(r["generated_tokens"] / v for r, v in zip(rows, values, strict=True))

    def mean(key: str, weights: list) -> float | None:
        values = [r[key] for r in rows]
        return None if None in values else _weighted(weights, values)

    tasks = sorted({t for r in rows for t in r["per_task_accuracy"]})
    return {
        **rows[0],
        "prompts": n,
        "generated_tokens": tokens,
        "forward_passes": forwards,
        "tokens_per_forward": tokens / forwards,
        "forward_reduction_vs_ntp": ntp_forwards / forwards,
        "decode_tokens_per_s": tokens / sum(seconds),
        "mean_ttft_ms": mean("mean_ttft_ms", prompts),
        "runtime_overhead_pct": mean("runtime_overhead_pct", seconds),
        "predicted_decode_tokens_per_s": rate("predicted_decode_tokens_per_s"),
        "learned_curve_decode_tokens_per_s": rate("learned_curve_decode_tokens_per_s"),
        "sbd_blocks": sum(r["sbd_blocks"] for r in rows),
        "same_tokens_as_ntp": sum(r.get("same_tokens_as_ntp", 0) for r in rows),
        "accuracy": mean("accuracy", prompts),
        "per_task_accuracy": {t: _weighted(prompts, [r["per_task_accuracy"].get(t, 0.0) for r in rows]) for t in tasks},
    }


def merge_bench(parts: list[list[dict]]) -> list[dict]:
    """``setblock bench`` results of the same systems on disjoint prompt sets, system by system."""
    return [merge_rows(rows) for rows in zip(*parts, strict=True)]


def halves(f: Path) -> list[Path]:
    """A prompt file split in two (the first half, the rest), beside it: two jobs that can run on
    the two cores."""
    lines = [line for line in f.read_text().splitlines() if line.strip()]
    cut = (len(lines) + 1) // 2
    out = []
    for i, part in enumerate((lines[:cut], lines[cut:])):
        if part:
            h = f.with_name(f"{f.stem}-half{i}.jsonl")
            h.write_text("\n".join(part) + "\n")
            out.append(h)
    return out


def section_table(res: dict, limit: int | None, models: list[str]) -> None:
    low, high = gammas()
    files = prompt_files(limit)
    kept = {m: kept_rows(res, m, files, low, high) for m in ("sbd", "ntp") if m not in models}
    out: dict = {"block_size": BLOCK, "gamma_low": low, "gamma_high": high, "folder": FOLDER, "tasks": {}}
    # each SBD row also verified (docs/sbd-verified.md)
    sbd_args = ("--block-size", str(BLOCK), "--gammas", f"{low},{high}", "--verify")
    # accuracy and forwards only (load does not change them): each task's problems in two halves,
    # so that the jobs share the two cores evenly
    with ThreadPoolExecutor(2) as pool:
        jobs = {}
        for task, f in files.items():
            parts = halves(f)
            jobs[task] = (
                [pool.submit(bench, NTP / FOLDER, h, 1, "--ntp-only") for h in parts] if "ntp" in models else None,
                [pool.submit(bench, SBD / FOLDER, h, 1, *sbd_args) for h in parts] if "sbd" in models else None,
            )
        for task, (ntp, sbd) in jobs.items():
            row: dict = {"problems": sum(1 for line in files[task].read_text().splitlines() if line.strip())}
            if ntp is not None:
                row["ntp_twin"] = merge_bench([j.result() for j in ntp])[0]
            if sbd is not None:
                s = merge_bench([j.result() for j in sbd])
                row["sbd_ntp"] = s[0]
                row["sbd"] = [r for r in s[1:] if "+verify" not in r["system"]]
                row["sbd_verified"] = [r for r in s[1:] if "+verify" in r["system"]]
            for rows in kept.values():
                row.update(rows[task])
            out["tasks"][task] = row
            res["table"] = out
            OUT.write_text(json.dumps(res, indent=1))  # task by task: a run cut short keeps them
            systems = [row["sbd_ntp"], *row["sbd"], *row["sbd_verified"]]
            accuracy = ", ".join(f"{r['system']} {r['accuracy']:.1f}" for r in systems)
            print(f"{task}: twin {row['ntp_twin']['accuracy']:.1f}, {accuracy}")
    res["table"] = out


def section_sweep(res: dict, limit: int) -> None:
    low, high = gammas()
    gs = sorted(set(SWEEP + [low, high]))
    files = prompt_files(limit)
    with ThreadPoolExecutor(2) as pool:
        jobs = {
            t: pool.submit(bench, SBD / FOLDER, f, 1, "--block-size", str(BLOCK), "--gammas", ",".join(map(str, gs)))
            for t, f in files.items()
        }
        res["sweep"] = {"problems_per_task": limit, "gammas": gs, "tasks": {t: j.result() for t, j in jobs.items()}}


LTR_GAMMAS = [0.0, 0.1, 0.35, 1.0]


def section_sweep_ltr(res: dict, limit: int) -> None:
    """Both orders of reveal on the same problems (a paired comparison)."""
    files = prompt_files(limit)
    for key, rule in (("sweep_left_to_right", "eb-left-to-right"), ("sweep_entropy_paired", "eb")):
        extra = ("--block-size", str(BLOCK), "--selection", rule, "--gammas", ",".join(map(str, LTR_GAMMAS)))
        with ThreadPoolExecutor(2) as pool:
            jobs = {t: pool.submit(bench, SBD / FOLDER, f, 1, *extra) for t, f in files.items()}
            tasks = {t: j.result() for t, j in jobs.items()}
        res[key] = {"problems_per_task": limit, "gammas": LTR_GAMMAS, "tasks": tasks}


VERIFIED_GAMMAS = [0.1, 0.35, 0.6, 1.0, 2.0, 1000.0]
VERIFIED_BLOCKS = [8, 16]


def section_sweep_verified(res: dict, limit: int) -> None:
    """Verified SBD (docs/sbd-verified.md) over gammas and block sizes: its accuracy is NTP
    decoding's by construction, so the sweep measures forwards only (and checks that)."""
    files = prompt_files(limit)
    out: dict = {"problems_per_task": limit, "gammas": VERIFIED_GAMMAS, "blocks": {}}
    for k in VERIFIED_BLOCKS:
        extra = ("--block-size", str(k), "--verify-only", "--gammas", ",".join(map(str, VERIFIED_GAMMAS)))
        with ThreadPoolExecutor(2) as pool:
            jobs = {t: pool.submit(bench, SBD / FOLDER, f, 1, *extra) for t, f in files.items()}
            out["blocks"][str(k)] = {t: j.result() for t, j in jobs.items()}
        res["sweep_verified"] = out
        OUT.write_text(json.dumps(res, indent=1))


def generate(model: Path, prompt: str, *extra: str) -> dict:
    cmd = [str(EXE), "generate", "--model", str(model), "--prompt", prompt, "--json", "--threads", "1", *extra]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def section_reference(res: dict, n: int) -> None:
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export.decode import Reference

    low, _ = gammas()
    ref = Reference.load(SBD / FOLDER, onnx=True)
    out, verified = {}, {}
    for task, f in prompt_files(n).items():
        same = same_verified = 0
        for line in f.read_text().splitlines():
            r = json.loads(line)
            rust = generate(SBD / FOLDER, r["question"], "--block-size", str(BLOCK), "--gamma", str(low))
            py = ref.generate_text(r["rendered"], mode="sbd", block_size=BLOCK, gamma=low, max_new_tokens=256)
            same += int(py["tokens"] == rust["tokens"] and py["forwards"] == rust["forward_passes"])
            # verified SBD at its default (a whole block a forward) against the reference's
            rust = generate(SBD / FOLDER, r["question"], "--block-size", str(BLOCK), "--verify")
            pv = ref.sbd_verified(ref.prompt_ids(r["rendered"]), BLOCK, math.inf, 256)
            same_verified += int(pv.tokens == rust["tokens"] and pv.forwards == rust["forward_passes"])
        out[task] = [same, n]
        verified[task] = [same_verified, n]
        print(f"reference {task}: {same}/{n}, verified {same_verified}/{n}")
    res["reference"] = {"folder": FOLDER, "gamma": low, "block_size": BLOCK, "agree": out, "agree_verified": verified}


def merged_checkpoint(name: str) -> Path:
    """The adapter merged into its base, saved as a plain HF checkpoint (for onnxruntime-genai)."""
    out = WORK / f"merged-{name}"
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export import hf

    # stamped with the adapter it merges: a retrained adapter is merged again, never a stale one used
    stamp = adapter_sha(name)
    mark = out / ".adapter-sha256"
    if not (out / "config.json").exists() or not mark.exists() or mark.read_text() != stamp:
        shutil.rmtree(out, ignore_errors=True)
        model = hf.load_model(adapter_dir(name))
        model.save_pretrained(out)
        hf.load_tokenizer(adapter_dir(name)).save_pretrained(out)
        mark.write_text(stamp)
    return out


def section_speed(res: dict, per_task: int, repeat: int, rounds: int, only: list[str] | None = None) -> None:
    """``only``: measure these folders again, keeping the other folders' figures."""
    low, high = gammas()
    rows = []
    for f in prompt_files(per_task).values():
        rows += f.read_text().splitlines()
    prompts = WORK / f"speed-{per_task}.jsonl"
    prompts.write_text("\n".join(rows) + "\n")
    out: dict = {"prompts": len(rows), "threads": 2, "repeat": repeat, "block_size": BLOCK, "folders": {}}
    if only:
        out = res.get("speed", out)
    # every folder scripts/smollm2-sbd.sh built and verified (its .adapter-sha256 stamp); a folder named
    # by --speed-folders is measured as it is, stamped or not (a quantized one may fail verify: its
    # speed is still what int4/int8 cost and buy), and one that is not there is an error
    built = [f for f in ("int8", "int4", "fp32") if (SBD / f / ".adapter-sha256").exists() and f in (only or [f])]
    for f in only or []:
        if not (SBD / f / "setblock.json").exists():
            quant = "none" if f == "fp32" else f
            raise SystemExit(f"--speed-folders {f}: {SBD / f} is not built; run QUANT={quant} scripts/smollm2-sbd.sh")
        if f not in built:
            print(f"{f}: {SBD / f} has no .adapter-sha256 (verify failed or did not run): measured as it is")
            built.append(f)
    for folder in built:
        # the manifest's gammas, and a whole block a forward (verified SBD's fewest forwards: sweep-verified)
        gs = f"{low},{high},{VERIFIED_GAMMAS[-1]}"
        extra = ["--auto", "--verify", "--repeat", str(repeat), "--block-size", str(BLOCK), "--gammas", gs]
        out["folders"][folder] = bench(SBD / folder, prompts, 2, *extra)
        print(folder, [(r["system"], round(r["decode_tokens_per_s"], 1)) for r in out["folders"][folder]])
    for precision in [p for p in ("fp32", "int4") if p in built]:
        # onnxruntime-genai's own build of the merged weights at this precision, against our folder's NTP
        genai_dir = genai_model(merged_checkpoint("sbd"), WORK / f"genai-sbd-{precision}", precision)
        genai_cmd = [sys.executable, str(ROOT / "bench" / "genai_run.py"), str(genai_dir), str(prompts)]
        genai_cmd += ["--threads", "2", "--rendered"]
        ours_cmd = [str(EXE), "bench", "--model", str(SBD / precision), "--prompts", str(prompts), "--threads", "2"]
        ours_cmd += ["--json", "--ntp-only"]
        h2h: dict[str, list] = {"genai": [], "ours": []}
        for _ in range(rounds):
            o, rss = run_measured(genai_cmd)
            row = {k: v for k, v in json.loads(o).items() if k != "texts"}
            h2h["genai"].append({**row, "peak_rss_mib": rss / 1024})
            o, rss = run_measured(ours_cmd)
            h2h["ours"].append({**json.loads(o)[0], "peak_rss_mib": rss / 1024})
        out[f"genai_{precision}_ntp"] = h2h
        print(precision, {k: [round(r["decode_tokens_per_s"], 1) for r in v] for k, v in h2h.items()})
    res["speed"] = out


def devil_text() -> str:
    """The Devil's Dictionary from Debian's dict-devil (apt-get download; nothing installed)."""
    d = WORK / "dict-devil"
    dz = d / "x" / "usr" / "share" / "dictd" / "devil.dict.dz"
    if not dz.exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "dict-devil"], cwd=d, check=True, capture_output=True)
        deb = next(d.glob("dict-devil_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(d / "x")], check=True)
    text = gzip.decompress(dz.read_bytes()).decode("utf-8", errors="strict")
    return text[text.index("PREFACE") :]  # after the dictd header and the edition notice


def base_gguf() -> Path:
    """The pinned base's gguf (scripts/fetch-smollm2.sh fetches it once and prints its path)."""
    fetch = [str(ROOT / "scripts" / "fetch-smollm2.sh")]
    return Path(subprocess.run(fetch, check=True, capture_output=True, text=True).stdout.strip())


def _held_out(windows: int, length: int):  # noqa: ANN202 - (hf module, base gguf path, chunks tensor)
    """The exporter's hf module (adapters find their base through SETBLOCK_LORA_BASE, set here), the
    base's gguf and the held-out text as ``windows`` rows of ``length`` tokens of the SBD adapter's
    tokenizer."""
    import torch

    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export import hf

    torch.set_num_threads(2)
    gguf = base_gguf()
    os.environ["SETBLOCK_LORA_BASE"] = str(gguf)
    tok = hf.load_tokenizer(adapter_dir("sbd"))
    ids = tok(devil_text(), add_special_tokens=False)["input_ids"]
    n = min(windows, len(ids) // length)
    return hf, gguf, torch.tensor(ids[: n * length]).view(n, length)


def perplexity(model, chunks) -> float:  # noqa: ANN001 - a causal LM, a [windows, length] tensor
    """exp(mean next-token NLL) of ``model`` over the rows of ``chunks``."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for row in chunks:
            logits = model(input_ids=row[None]).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
            count += len(row) - 1
    return math.exp(nll / count)


def section_ppl(res: dict, windows: int, length: int) -> None:
    hf, gguf, chunks = _held_out(windows, length)
    out: dict = {
        "corpus": "The Devil's Dictionary (Debian dict-devil)",
        "windows": len(chunks),
        "tokens_per_window": length,
    }
    for name, load in (
        ("base", lambda: hf.load_base(gguf)),
        ("ntp_twin", lambda: hf.load_model(adapter_dir("ntp"))),
        ("sbd", lambda: hf.load_model(adapter_dir("sbd"))),
    ):
        model = load()
        out[name] = perplexity(model, chunks)
        print(f"perplexity {name}: {out[name]:.3f}")
        del model
    res["ppl"] = out


def section_ppl_candidates(res: dict, adapters: list[Path], windows: int, length: int) -> None:
    """``ppl`` for adapters that are not the shipped ones (a later stage, another recipe), kept under
    ``ppl_candidates`` by path with their weights' sha256 prefix; the report does not show them."""
    if not adapters:
        raise SystemExit("ppl-candidates: name the adapter folders with --adapters DIR [DIR ...]")
    hf, _, chunks = _held_out(windows, length)
    out = res.setdefault("ppl_candidates", {})
    for adapter in adapters:
        if not (adapter / "adapter_model.safetensors").exists():
            raise SystemExit(f"--adapters {adapter}: no adapter_model.safetensors there")
        ppl = perplexity(hf.load_model(adapter), chunks)
        sha = hf.sha256(adapter / "adapter_model.safetensors")[:12]
        out[str(adapter)] = {
            "perplexity": ppl,
            "adapter_sha256": sha,
            "windows": len(chunks),
            "tokens_per_window": length,
        }
        print(f"perplexity {adapter} ({sha}): {ppl:.3f}")


def candidate_folder(adapter: Path) -> tuple[Path, str]:
    """``adapter`` exported to fp32 as scripts/smollm2-sbd.sh exports the shipped one (blocks 2..16,
    default 8), under runs/smollm2-results/candidates/; exported again only when its weights change.
    The folder and the weights' sha256."""
    sys.path.insert(0, str(ROOT / "export"))
    from setblock_export import hf

    weights_file = adapter / "adapter_model.safetensors"
    if not weights_file.exists():
        raise SystemExit(f"--adapters {adapter}: no adapter_model.safetensors there")
    sha = hf.sha256(weights_file)
    out = WORK / "candidates" / f"{adapter.resolve().name}-fp32"
    stamp = out / ".built-from-adapter"
    if stamp.exists() and stamp.read_text().strip() == sha:
        return out, sha
    shutil.rmtree(out, ignore_errors=True)
    export = [sys.executable, "-m", "setblock_export", "export", "--checkpoint", str(adapter), "--out", str(out)]
    export += ["--quantize", "none", "--block-sizes", "2", "16", "--default-block-size", str(BLOCK)]
    subprocess.run(export, check=True, env={**os.environ, "SETBLOCK_LORA_BASE": str(base_gguf())})
    stamp.write_text(sha + "\n")
    return out, sha


def section_table_candidates(res: dict, adapters: list[Path], limit: int | None) -> None:
    """Table 1's SBD-model rows (NTP decoding, SBD at gamma low; accuracy and forwards) for adapters
    that are not the shipped one, kept under ``table_candidates`` by path with their weights'
    sha256 prefix, and a line per adapter beside the twin's accuracies when the table has them."""
    if not adapters:
        raise SystemExit("table-candidates: name the adapter folders with --adapters DIR [DIR ...]")
    files = prompt_files(limit)
    # the twin's accuracy where the table decoded the same problems (not with another --limit)
    twin = {t: r["ntp_twin"] for t, r in res.get("table", {}).get("tasks", {}).items()}
    out = res.setdefault("table_candidates", {})
    for adapter in adapters:
        folder, sha = candidate_folder(adapter)
        low = json.loads((folder / "setblock.json").read_text())["gamma"]["low"]
        extra = ("--block-size", str(BLOCK), "--gammas", str(low))
        entry: dict = {"adapter_sha256": sha[:12], "block_size": BLOCK, "gamma": low, "folder": "fp32", "tasks": {}}
        with ThreadPoolExecutor(2) as pool:  # accuracy and forwards only: two halves on the two cores
            jobs = {t: [pool.submit(bench, folder, h, 1, *extra) for h in halves(f)] for t, f in files.items()}
            for task, parts in jobs.items():
                ntp, *sbd = merge_bench([j.result() for j in parts])
                entry["tasks"][task] = {"problems": ntp["prompts"], "sbd_ntp": ntp, "sbd": sbd}
        out[str(adapter)] = entry
        OUT.write_text(json.dumps(res, indent=1))
        for task, row in entry["tasks"].items():
            same = task in twin and twin[task]["prompts"] == row["problems"]
            vs = f" (twin {twin[task]['accuracy']:.1f})" if same else ""
            sbd = row["sbd"][0]
            print(
                f"{adapter} {task}: NTP decoding {row['sbd_ntp']['accuracy']:.1f}{vs}, SBD gamma {low} "
                f"{sbd['accuracy']:.1f} at {sbd['forward_reduction_vs_ntp']:.2f}x fewer forwards"
            )


def section_general(res: dict) -> None:
    low, _ = gammas()
    rows = [json.loads(line) for line in (MIX / "general_test.jsonl").read_text().splitlines()]
    out: dict = {"prompts": len(rows), "gamma": low, "verified_gamma": "inf", "block_size": BLOCK}
    limit = ("--max-new-tokens", "200")
    ntp = [generate(SBD / FOLDER, r["user"], "--mode", "ntp", *limit) for r in rows]
    ntp_forwards = sum(n["forward_passes"] for n in ntp)
    for key, extra in (("", ("--gamma", str(low))), ("verified_", ("--verify",))):
        same = tokens = forwards = 0
        per = []
        for r, n in zip(rows, ntp, strict=True):
            s = generate(SBD / FOLDER, r["user"], "--block-size", str(BLOCK), *extra, *limit)
            eq = s["tokens"] == n["tokens"]
            same += int(eq)
            tokens += len(s["tokens"])
            forwards += s["forward_passes"]
            per.append({"user": r["user"], "equal": eq, "tokens": len(s["tokens"]), "forwards": s["forward_passes"]})
        out[f"{key}equal_to_ntp_greedy"] = same
        out[f"{key}tokens_per_forward"] = tokens / max(forwards, 1)
        out[f"{key}forward_reduction_vs_ntp"] = ntp_forwards / max(forwards, 1)
        out[f"{key}rows"] = per
        print(f"general {key or 'plain'}: {same}/{len(rows)} equal, {tokens / max(forwards, 1):.2f} tokens/forward")
    res["general"] = out


def section_extract_schema(res: dict, limit: int | None) -> None:
    low, high = gammas()
    f = prompt_files(limit)["extract"]
    args = ("--block-size", str(BLOCK), "--gammas", f"{low},{high}", "--verify", "--json-schema", str(EXTRACT_SCHEMA))
    with ThreadPoolExecutor(2) as pool:
        rows = merge_bench([j.result() for j in [pool.submit(bench, SBD / FOLDER, h, 1, *args) for h in halves(f)]])
    problems = sum(1 for line in f.read_text().splitlines() if line.strip())
    res["extract_schema"] = {"problems": problems, "block_size": BLOCK, "folder": FOLDER, "rows": rows}
    for r in rows:
        print(f"extract under its schema: {r['system']} {r['accuracy']:.1f}% ({r['forward_reduction_vs_ntp']:.2f}x)")


def extract_schema_lines(res: dict) -> list[str]:
    """The extract task under its schema, beside Table 1's unconstrained rows of the same problems."""
    e = res.get("extract_schema")
    if not e:
        return []
    where = f"{e['problems']} problems, {e['folder']}, block {e['block_size']}"
    lines = [f"## The extract task under its JSON schema ({where})", ""]
    lines += ["`--json-schema bench/extract.schema.json` (docs/structured-output.md). Forward reduction against"]
    lines += ["NTP + grammar decoding of the same model."]
    t = res.get("table", {}).get("tasks", {}).get("extract")
    free: dict[str, dict] = {}
    if t and t["problems"] == e["problems"]:
        free = {r["system"]: r for r in [t["sbd_ntp"], *t["sbd"], *t["sbd_verified"]]}
        lines[-1] += " Without the schema: Table 1's extract rows (the same problems)."
    lines += ["", "| decoding | accuracy % | forward reduction | without the schema |", "|---|---|---|---|"]
    for r in e["rows"]:
        f = free.get(r["system"])
        other = f"{f['accuracy']:.1f} ({f['forward_reduction_vs_ntp']:.2f}x)" if f else "-"
        red = f"{r['forward_reduction_vs_ntp']:.2f}x"
        lines.append(f"| {r['system']} + grammar | {r['accuracy']:.1f} | {red} | {other} |")
    return lines + [""]


def sweep_lines(res: dict) -> list[str]:
    """The gamma sweeps as a table: accuracy (forward reduction) per task, entropy order and left to right."""
    lines: list[str] = []
    orders = (
        ("sweep", "entropy order (EB-Sampler)"),
        ("sweep_entropy_paired", "entropy order (EB-Sampler), the left-to-right sweep's problems"),
        ("sweep_left_to_right", "left to right"),
    )
    for key, order in orders:
        sw = res.get(key)
        if not sw:
            continue
        tasks = list(sw["tasks"])
        lines += [f"## Gamma sweep, slots in {order} ({sw['problems_per_task']} problems per task, block {BLOCK})", ""]
        lines += ["| decoding | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for i, r0 in enumerate(sw["tasks"][tasks[0]]):
            cells = [sw["tasks"][t][i] for t in tasks]
            body = " | ".join(f"{c['accuracy']:.0f} ({c['forward_reduction_vs_ntp']:.2f}x)" for c in cells)
            lines.append(f"| {r0['system']} | {body} |")
        lines += ["", "Accuracy in %; in brackets, forwards of NTP decoding of the same model / SBD's forwards.", ""]
    sv = res.get("sweep_verified")
    if sv:
        tasks = list(next(iter(sv["blocks"].values())))
        lines += [f"## Verified SBD over gammas and block sizes ({sv['problems_per_task']} problems per task)", ""]
        lines += ["| block | decoding | " + " | ".join(tasks) + " | mean reduction |"]
        lines += ["|---" * (len(tasks) + 3) + "|"]
        for k, per_task in sv["blocks"].items():
            for i, r0 in enumerate(per_task[tasks[0]]):
                cells = [per_task[t][i] for t in tasks]
                body = " | ".join(f"{c['accuracy']:.0f} ({c['forward_reduction_vs_ntp']:.2f}x)" for c in cells)
                mean = sum(c["forward_reduction_vs_ntp"] for c in cells) / len(cells)
                lines.append(f"| {k} | {r0['system']} | {body} | {mean:.2f}x |")
        lines += ["", "Accuracy in %; in brackets, forwards of NTP decoding / verified SBD's forwards.", ""]
    return lines


def plot(res: dict) -> None:
    """docs/results-smollm2.png: accuracy against forward reduction per task, both orders of reveal,
    and verified SBD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = res["sweep"]
    tasks = list(sw["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), sharey=True)
    for ax, task in zip(axes, tasks, strict=True):
        for key, label in (
            ("sweep", "SBD, entropy order"),
            ("sweep_entropy_paired", "SBD, entropy order"),
            ("sweep_left_to_right", "SBD, left to right"),
        ):
            rows = [r for r in res.get(key, {}).get("tasks", {}).get(task, []) if r["system"] != "ntp"]
            if not rows:
                continue
            n = res[key]["problems_per_task"]
            xs = [r["forward_reduction_vs_ntp"] for r in rows]
            ys = [r["accuracy"] for r in rows]
            ax.plot(xs, ys, "o-", label=f"{label} ({n} problems)")
            for x, y, r in zip(xs, ys, rows, strict=True):
                ax.annotate(r["system"].split("=")[-1], (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        for k, per_task in res.get("sweep_verified", {}).get("blocks", {}).items():
            rows = [r for r in per_task.get(task, []) if r["system"] != "ntp"]
            xs = [r["forward_reduction_vs_ntp"] for r in rows]
            ys = [r["accuracy"] for r in rows]
            n = res["sweep_verified"]["problems_per_task"]
            ax.plot(xs, ys, "s-", ms=4, label=f"SBD verified, block {k} ({n} problems)")
        ntp = next(r for r in sw["tasks"][task] if r["system"] == "ntp")
        ax.axhline(ntp["accuracy"], color="gray", ls="--", label="SBD model, NTP decoding")
        twin = res.get("table", {}).get("tasks", {}).get(task, {}).get("ntp_twin")
        if twin:
            ax.axhline(twin["accuracy"], color="black", ls=":", label="NTP twin (table's problems)")
        ax.set_title(task)
        ax.set_xlabel("forward-pass reduction vs NTP (x)")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("SmolLM2-135M SBD: accuracy vs forward-pass reduction (gamma sweep, fp32, block 8)")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "results-smollm2.png", dpi=110)


def weights_lines(res: dict) -> list[str]:
    """Which adapters each section measured, against the committed ones."""
    now = {name: adapter_sha(name)[:12] for name in ("sbd", "ntp")}
    built = [d.name for d in sorted(ADAPTERS.iterdir()) if (d / "adapter_model.safetensors").exists()]
    stages = {adapter_sha(name)[:12]: name for name in built}
    lines = ["Adapters measured, per section (sha256 prefix of `adapter_model.safetensors`; committed now: "]
    lines[0] += ", ".join(f"`adapters/{adapter_dir(k).name}` {v}" for k, v in now.items()) + "):"
    lines.append("")
    for key in [k for keys in KEYS.values() for k in keys if k in res]:
        w = res[key].get("weights")
        if w is None:
            lines.append(f"- {key}: not recorded (measured before the results file kept it)")
            continue
        w = {m: v for m, v in w.items() if m in models_of(key)}
        names = ", ".join(f"{m} `adapters/{stages.get(v, '?')}` {v}" for m, v in w.items())
        current = all(now[m] == v for m, v in w.items())
        stale = "" if current else " (**not the committed adapters: rerun this section**)"
        lines.append(f"- {key}: {names}{stale}")
    return lines + [""]


def report(res: dict) -> None:
    lines = ["# SmolLM2-135M-Instruct as an SBD model: results", ""]
    lines.append("Regenerated by `.venv/bin/python bench/smollm2_results.py` (sections below); figures from")
    lines.append("docs/results-smollm2.json. Model card: models/smollm2-135m-sbd/README.md.")
    lines.append("")
    lines += weights_lines(res)
    t = res.get("table")
    if t:
        tasks = list(t["tasks"])
        lines += [f"## Table 1 (held-out problems, {t['folder']} folders, block {t['block_size']})", ""]
        lines.append("| | " + " | ".join(f"{k} ({t['tasks'][k]['problems']})" for k in tasks) + " | mean |")
        lines.append("|---" * (len(tasks) + 2) + "|")

        def row(label: str, pick) -> None:  # noqa: ANN001
            cells = [pick(t["tasks"][k]) for k in tasks]
            acc = sum(c[0] for c in cells) / len(cells)
            red = [c[1] for c in cells if c[1] is not None]
            mean = f"{acc:.1f}" + (f" ({sum(red) / len(red):.2f}x)" if red else "")
            body = " | ".join(f"{a:.1f}" + (f" ({r:.2f}x)" if r is not None else "") for a, r in cells)
            lines.append(f"| {label} | {body} | {mean} |")

        row("NTP twin, NTP decoding", lambda r: (r["ntp_twin"]["accuracy"], None))
        row("SBD model, NTP decoding", lambda r: (r["sbd_ntp"]["accuracy"], None))
        for key, name in (("sbd", "SBD"), ("sbd_verified", "SBD verified")):
            if key not in t["tasks"][tasks[0]]:
                continue
            for i, g in enumerate((t["gamma_low"], t["gamma_high"])):
                pick = lambda r, i=i, k=key: (r[k][i]["accuracy"], r[k][i]["forward_reduction_vs_ntp"])  # noqa: E731
                row(f"{name}, gamma = {g}", pick)
        lines += ["", "Accuracy in %; in brackets, forwards of NTP decoding of the same model / SBD's forwards."]
        lines += ["SBD verified: `--verify` (docs/sbd-verified.md), every drafted token checked against the model's"]
        lines += ["own NTP choice in the forward that starts the next block; its output is NTP decoding's.", ""]
    lines += extract_schema_lines(res)
    lines += sweep_lines(res)
    if "sweep" in res:
        plot(res)
        lines += ["![accuracy against forward reduction](results-smollm2.png)", ""]
    for key, title in (("reference", "Reference decoder agreement"), ("general", "General instructions")):
        if key in res:
            summary = {k: v for k, v in res[key].items() if not k.endswith("rows")}
            lines += [f"## {title}", "", "```json", json.dumps(summary, indent=1), "```", ""]
    if "ppl" in res:
        p = res["ppl"]
        lines += ["## Perplexity on held-out general text", ""]
        lines += [f"{p['corpus']}, {p['windows']} windows of {p['tokens_per_window']} tokens.", ""]
        lines += ["| model | perplexity | vs base |", "|---|---|---|"]
        lines += [f"| {m} | {p[m]:.3f} | {p[m] / p['base']:.3f}x |" for m in ("base", "ntp_twin", "sbd")]
        lines.append("")
    if "speed" in res:
        s = res["speed"]
        lines += ["## Wall clock (2 threads, interleaved)", ""]
        lines += ["| folder | system | decode tokens/s | tokens/forward | TTFT ms | accuracy % |"]
        lines += ["|---|---|---|---|---|---|"]
        for folder, rs in s["folders"].items():
            for r in rs:
                lines.append(
                    f"| {folder} | {r['system']} | {r['decode_tokens_per_s']:.1f} | {r['tokens_per_forward']:.2f} "
                    f"| {r['mean_ttft_ms']:.1f} | {r['accuracy']:.1f} |"
                )
        for precision in ("fp32", "int4"):
            for name, runs in s.get(f"genai_{precision}_ntp", {}).items():
                med = sorted(runs, key=lambda r: r["decode_tokens_per_s"])[len(runs) // 2]
                lines.append(
                    f"| {precision} | {name} NTP (median of {len(runs)} rounds, peak RSS "
                    f"{max(r['peak_rss_mib'] for r in runs):.0f} MiB) | {med['decode_tokens_per_s']:.1f} | 1.00 "
                    f"| {med['mean_ttft_ms']:.1f} | {med['accuracy']:.1f} |"
                )
        lines.append("")
    (ROOT / "docs" / "results-smollm2.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the default: every result of the shipped adapters
    every = [s for s in SECTIONS if s not in ("ppl-candidates", "table-candidates", "report")]
    ap.add_argument("sections", nargs="*", default=every, choices=SECTIONS)
    ap.add_argument(
        "--limit", type=int, default=None, help="problems per task for the table and extract-schema (default: all 300)"
    )
    ap.add_argument(
        "--table-models",
        nargs="+",
        choices=["sbd", "ntp"],
        default=["sbd", "ntp"],
        help="table: the models decoded; the other's rows are kept from the results file (same adapter and problems)",
    )
    ap.add_argument("--sweep-limit", type=int, default=100)
    ap.add_argument("--ltr-limit", type=int, default=20, help="problems per task for sweep-ltr")
    ap.add_argument("--verified-limit", type=int, default=25, help="problems per task for sweep-verified")
    ap.add_argument("--reference-n", type=int, default=10, help="problems per task for the reference check")
    ap.add_argument("--speed-per-task", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--speed-folders", nargs="+", choices=["int8", "int4", "fp32"], help="speed: only these folders")
    ap.add_argument("--rounds", type=int, default=3, help="onnxruntime-genai head-to-head rounds")
    ap.add_argument("--ppl-windows", type=int, default=48)
    ap.add_argument(
        "--adapters", nargs="+", type=Path, default=[], help="ppl-candidates, table-candidates: the adapter folders"
    )
    ap.add_argument("--folder", choices=["fp32", "int8"], default="fp32", help="the folders decoded for accuracy")
    a = ap.parse_args()
    global FOLDER  # noqa: PLW0603 - one setting for every section
    FOLDER = a.folder
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    if any(s != "report" for s in a.sections):
        check_folders()
    for s in a.sections:
        if s == "table":
            section_table(res, a.limit, a.table_models)
        elif s == "sweep":
            section_sweep(res, a.sweep_limit)
        elif s == "sweep-ltr":
            section_sweep_ltr(res, a.ltr_limit)
        elif s == "sweep-verified":
            section_sweep_verified(res, a.verified_limit)
        elif s == "reference":
            section_reference(res, a.reference_n)
        elif s == "speed":
            section_speed(res, a.speed_per_task, a.repeat, a.rounds, a.speed_folders)
        elif s == "ppl":
            section_ppl(res, a.ppl_windows, 512)
        elif s == "ppl-candidates":
            section_ppl_candidates(res, a.adapters, a.ppl_windows, 512)
        elif s == "table-candidates":
            section_table_candidates(res, a.adapters, a.limit)
        elif s == "general":
            section_general(res)
        elif s == "extract-schema":
            section_extract_schema(res, a.limit)
        for key in KEYS.get(s, []):
            res[key]["weights"] = weights(key)
        OUT.write_text(json.dumps(res, indent=1))
    report(res)


if __name__ == "__main__":
    main()
