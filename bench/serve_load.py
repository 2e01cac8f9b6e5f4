"""A bounded load on `setblock serve` over loopback: every request answered or refused with 429,
none lost, greedy answers equal to the CLI's, and the server's memory before and after.

    cargo build --release && .venv/bin/python bench/serve_load.py [--requests 200 --clients 8]

Writes docs/serve_load.json. Run it on an otherwise idle machine: it reports wall-clock figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [  # in the demo model's distribution (its sort and gsm tasks)
    "sort 42 17 88 17 30 61",
    "sort 15 73 29 64 11 50",
    "sort 90 35 12 47 68 23",
    "Ned has 5 boxes of eggs. Each box holds 7 eggs. Ned finds 14 more eggs. Ned gives 9 eggs to Ann. "
    "How many eggs does Ned have now?",
]


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))  # type: ignore[union-attr]


def post(url: str, body: dict) -> tuple[int, str, float]:
    """Status, the answer's text (streamed or not), seconds to the first byte of the answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            if not body.get("stream"):
                first = time.perf_counter() - t0
                return r.status, json.loads(r.read())["choices"][0]["message"]["content"], first
            text, first = "", 0.0
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if delta and not first:
                    first = time.perf_counter() - t0
                text += delta
            return r.status, text, first
    except urllib.error.HTTPError as e:
        return e.code, "", time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "setblock")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "demo")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve_load.json")
    a = ap.parse_args()

    expected = {}
    for p in PROMPTS:
        out = subprocess.run(
            [str(a.bin), "generate", "--model", str(a.model), "--prompt", p, "--mode", "sbd", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        expected[p] = json.loads(out.stdout)["text"]
    cmd = [str(a.bin), "serve", "--model", str(a.model), "--port", "0", "--threads", "1"]
    cmd += ["--parallel", str(a.parallel), "--queue", str(a.queue)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url, ready = "", threading.Event()

    def read() -> None:
        nonlocal url
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else url
            if "ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        raise SystemExit("the server did not start")
    chat = url + "/v1/chat/completions"

    def one(i: int) -> tuple[int, bool, float]:
        p = PROMPTS[i % len(PROMPTS)]
        body = {"messages": [{"role": "user", "content": p}], "stream": i % 2 == 0, "setblock": {"mode": "sbd"}}
        code, text, first = post(chat, body)
        return code, code == 200 and text == expected[p], first

    def round_() -> tuple[list[tuple[int, bool, float]], float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as pool:
            res = list(pool.map(one, range(a.requests)))
        return res, time.perf_counter() - t0

    round_()  # warm-up: sessions created, caches allocated
    rss0 = rss_kib(proc.pid)
    res, wall = round_()
    rss1 = rss_kib(proc.pid)
    res2, _ = round_()
    rss2 = rss_kib(proc.pid)
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    proc.terminate()
    proc.wait(10)

    codes = [c for c, _, _ in res + res2]
    ok = [r for r in res if r[0] == 200]
    firsts = sorted(f for _, _, f in ok)
    tpf = float(re.search(r"^setblock_tokens_per_forward (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    figures = {
        "command": "cargo build --release && .venv/bin/python bench/serve_load.py",
        "requests_per_round": a.requests,
        "clients": a.clients,
        "parallel": a.parallel,
        "queue": a.queue,
        "answered": codes.count(200),
        "refused_429": codes.count(429),
        "other_status": len(codes) - codes.count(200) - codes.count(429),
        "answers_equal_to_cli": sum(1 for _, same, _ in res + res2 if same),
        "round_wall_s": round(wall, 3),
        "answered_per_s": round(len(ok) / wall, 1),
        "first_byte_ms_p50": round(1e3 * statistics.median(firsts), 2),
        "first_byte_ms_p95": round(1e3 * firsts[int(0.95 * (len(firsts) - 1))], 2),
        "tokens_per_forward": tpf,
        "rss_mib_after_warmup": round(rss0 / 1024, 1),
        "rss_mib_after_round_1": round(rss1 / 1024, 1),
        "rss_mib_after_round_2": round(rss2 / 1024, 1),
    }
    a.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if figures["other_status"] or figures["answers_equal_to_cli"] != figures["answered"]:
        raise SystemExit("a request was lost or answered differently from the CLI")


if __name__ == "__main__":
    main()
