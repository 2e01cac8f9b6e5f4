"""Make the generated binding's enum errors say what was expected; cancel generations at exit.

uniffi's Python converters reject a value that is not one of an enum's members with
``ValueError(value)``: ``GenerateConfig(mode="sbd")`` fails with ``ValueError: sbd``, naming neither
the type nor its members. This inserts a type check at the top of every enum converter's
``check_lower`` that raises ``TypeError: expected a DecodeMode (DecodeMode.SBD, DecodeMode.NTP,
DecodeMode.AUTO), got 'sbd'``. It fails loudly when the generated code no longer has the shape it
patches, so a uniffi upgrade cannot silently drop it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HELPER = '''

def _setblock_check_type(value: object, cls: type) -> None:
    """Raise a TypeError naming the expected enum and its members (bindings/python/patch_binding.py)."""
    if isinstance(value, cls):
        return
    if issubclass(cls, enum.Enum):
        choices = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
    else:
        names = [n for n, v in vars(cls).items() if n.isupper() and isinstance(v, type)]
        choices = ", ".join(f"{cls.__name__}.{n}(...)" for n in names)
    raise TypeError(f"expected a {cls.__name__} ({choices}), got {value!r}")


# A generation left running on a daemon thread at interpreter exit would call its listener while
# the interpreter tears down, which kills the thread inside Rust frames (SIGABRT). Cancel them all
# first and wait for them to end (atexit runs after non-daemon threads are joined).
import atexit as _setblock_atexit  # noqa: E402

_setblock_atexit.register(shutdown_generations, 5000)
'''

CONVERTER = re.compile(r"^class _UniffiFfiConverterType(\w+)\(_UniffiConverterRustBuffer\):$")


def patch(source: str) -> tuple[str, list[str]]:
    """Return the patched source and the enums whose check_lower got the type check."""
    lines = source.split("\n")
    out: list[str] = []
    patched: list[str] = []
    current: str | None = None
    for i, line in enumerate(lines):
        m = CONVERTER.match(line)
        if m:
            current = m.group(1)
        elif line.startswith("class "):
            current = None
        out.append(line)
        if current and line == "    def check_lower(value):":
            body = []
            for nxt in lines[i + 1 :]:
                if nxt.startswith("    @staticmethod") or nxt.startswith("class "):
                    break
                body.append(nxt)
            if any(b.strip() == "raise ValueError(value)" for b in body):
                out.append(f"        _setblock_check_type(value, {current})")
                patched.append(current)
    return "\n".join(out) + HELPER, patched


def main() -> None:
    path = Path(sys.argv[1])
    text, patched = patch(path.read_text())
    want = {"DecodeMode", "SlotSelection"}
    if not want <= set(patched):
        sys.exit(f"patch_binding: {path} no longer has the converters it patches (patched {patched})")
    path.write_text(text)


if __name__ == "__main__":
    main()
