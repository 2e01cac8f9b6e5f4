"""onnxruntime-genai greedy NTP decoding over a prompt file: one process, one system.

    python bench/genai_run.py MODEL_DIR PROMPTS.jsonl [--threads N] [--max-new-tokens N] [--repeat R]

MODEL_DIR is what onnxruntime-genai's own model builder wrote
(``python -m onnxruntime_genai.models.builder -i CHECKPOINT -o MODEL_DIR -p fp32 -e cpu``).
Prompts are rendered as the demo model's chat template renders one user message
(``Question: {q}\\nAnswer:``), or with ``--rendered`` taken as each row's ``rendered`` field (a
chat model's template applied already), and tokenized by onnxruntime-genai's tokenizer. Rows with
``"grade": "json"`` are graded by parsing, as ``setblock bench`` grades them. Prints one JSON
object: the same fields as ``setblock bench --json`` where they apply, plus the texts, so that the
harness can check the outputs are equal. Peak resident memory is the harness's to measure (the
whole process).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import onnxruntime_genai as og

PROMPT = "Question: {q}\nAnswer:"


def set_threads(folder: Path, threads: int) -> None:
    """Pin the decoder's intra-op threads in genai_config.json (the same count as the runtime's)."""
    cfg_path = folder / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=4))


def final_answer(text: str) -> str | None:
    m = re.search(r"####\s*(\S+)", text)
    return m.group(1) if m else None


def is_correct(text: str, row: dict) -> bool:
    if row.get("grade") == "json":
        try:
            return json.loads(text.strip()) == json.loads(row["answer"])
        except json.JSONDecodeError:
            return False
    return final_answer(text) == row.get("answer")


def generate(model: og.Model, tok: og.Tokenizer, prompt: str, max_new: int) -> tuple[list[int], float, float]:
    """Greedy tokens, seconds to the first generated token, seconds of the rest."""
    ids = tok.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new, do_sample=False, batch_size=1)
    t0 = time.perf_counter()
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out: list[int] = []
    t_first = 0.0
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
        if len(out) == 1:
            t_first = time.perf_counter() - t0
    return out, t_first, time.perf_counter() - t0 - t_first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("prompts", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1, help="timed passes; outputs from the first")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rendered", action="store_true", help="each row's prompt is its rendered field, as is")
    a = ap.parse_args()

    def prompt(r: dict) -> str:
        return r["rendered"] if a.rendered else PROMPT.format(q=r["question"])

    set_threads(a.model, a.threads)
    rows = [json.loads(line) for line in a.prompts.read_text().splitlines() if line.strip()][: a.limit]
    model = og.Model(str(a.model))
    tok = og.Tokenizer(model)
    eos = int(json.loads((a.model / "genai_config.json").read_text())["model"]["eos_token_id"])
    for r in rows[:5]:  # warm-up, untimed
        generate(model, tok, prompt(r), a.max_new_tokens)
    texts: list[str] = []
    tokens = correct = 0
    ttft = decode_s = 0.0
    decode_tokens = 0
    for rep in range(a.repeat):
        for r in rows:
            out, first, rest = generate(model, tok, prompt(r), a.max_new_tokens)
            ttft += first
            decode_s += rest
            decode_tokens += len(out) - 1
            if rep == 0:
                text = tok.decode([t for t in out if t != eos])
                texts.append(text)
                tokens += len(out)
                correct += int(is_correct(text, r))
    n = len(rows) * a.repeat
    print(
        json.dumps(
            {
                "system": "onnxruntime-genai ntp",
                "prompts": len(rows),
                "generated_tokens": tokens,
                "forward_passes": tokens,
                "tokens_per_forward": 1.0,
                "decode_tokens_per_s": decode_tokens / max(decode_s, 1e-9),
                "mean_ttft_ms": 1e3 * ttft / n,
                "accuracy": 100.0 * correct / len(rows),
                "texts": texts,
            }
        )
    )


if __name__ == "__main__":
    main()
