"""1,000 extra validation problems for gsm and sort (seeds 301 and 303), disjoint from the
training, test and validation questions of runs/data: the set the demo model's stage 3 was
judged on (models/demo/README.md). Writes runs/data/extra-val-{gsm,sort}.jsonl.

    .venv/bin/python bench/make_extra_val.py
    target/release/setblock bench --prompts runs/data/extra-val-gsm.jsonl --threads 1 --gammas 0.005,0.01,0.05
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "export"))

from setblock_export.tasks import generate, write_jsonl  # noqa: E402


def main() -> None:
    data = ROOT / "runs" / "data"
    seen: dict[str, set[str]] = {}
    for name in ("train.jsonl", "test.jsonl", "val.jsonl"):
        for line in (data / name).read_text().splitlines():
            row = json.loads(line)
            seen.setdefault(row["task"], set()).add(row["question"])
    for task, seed in (("gsm", 301), ("sort", 303)):
        problems = generate(task, 1000, seed, exclude=seen[task])
        n = write_jsonl(data / f"extra-val-{task}.jsonl", [(task, p) for p in problems])
        print(f"wrote {n} {task} problems to {data / f'extra-val-{task}.jsonl'}")


if __name__ == "__main__":
    main()
