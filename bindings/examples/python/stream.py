"""Stream a reply from the demo model through the Python binding, then print the stats.

    bindings/python/build.sh && PYTHONPATH=bindings/python/gen python bindings/examples/python/stream.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import setblock_ffi as sb

ROOT = Path(__file__).resolve().parents[3]


class Printer(sb.GenerationListener):
    def on_event(self, event: sb.GenerationEvent) -> None:
        if isinstance(event, sb.GenerationEvent.BLOCK):
            print(event.text, end="", flush=True)


def main() -> None:
    model_dir = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "models" / "demo")
    prompt = sys.argv[2] if len(sys.argv) > 2 else "sort 42 17 88 17 30 61"
    model = sb.SbModel.load(sb.LoadConfig(model_dir=model_dir))
    session = sb.SbSession(model)
    for mode in (sb.DecodeMode.SBD, sb.DecodeMode.AUTO, sb.DecodeMode.NTP):
        r = session.generate(prompt, sb.GenerateConfig(mode=mode), Printer())
        s = r.stats
        print(f"\n[{mode.name}: {s.generated_tokens} tokens in {s.forward_passes} forwards, stop {s.stop_reason}]")
        session.reset()


if __name__ == "__main__":
    main()
