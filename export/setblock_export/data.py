"""Training data: ``.jsonl`` prompt/response pairs or ``.txt`` documents.

- ``.jsonl``: one object per line with ``prompt`` and ``response`` (strings). The loss covers the
  response only (its NTP targets and its noisy copy); the prompt is context. EOS is appended to
  the response.
- ``.txt``: documents separated by one or more blank lines; every token is trained (start = 0),
  EOS appended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """Token ids of one document and the first trained position."""

    ids: list[int]
    start: int


class DataError(ValueError):
    """A training file that cannot be used as it is."""


def _rows(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        raise DataError(f"training data {path} does not exist")
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append((str(row["prompt"]), str(row["response"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: expected a JSON object with 'prompt' and 'response' ({e})") from e
        return out
    if path.suffix == ".txt":
        docs = [d.strip("\n") for d in path.read_text(encoding="utf-8").split("\n\n")]
        return [("", d) for d in docs if d.strip()]
    raise DataError(f"training data {path}: use a .jsonl (prompt/response) or .txt (documents) file")


def document_texts(path: Path) -> list[str]:
    """Full document texts (prompt + response), for tokenizer training."""
    return [p + r for p, r in _rows(path)]


def encode(path: Path, tokenizer, eos_id: int, max_length: int) -> list[Example]:  # noqa: ANN001
    """Tokenize every row. A document longer than ``max_length`` is an error, never truncated."""
    out = []
    bos = getattr(tokenizer, "bos_token_id", None)
    for n, (prompt, response) in enumerate(_rows(path), 1):
        p = ([bos] if bos is not None else []) + tokenizer.encode(prompt, add_special_tokens=False)
        r = tokenizer.encode(response, add_special_tokens=False) + [eos_id]
        ids = p + r
        if len(ids) > max_length:
            raise DataError(
                f"{path} row {n}: {len(ids)} tokens exceed the model's {max_length} positions; "
                "shorten or split the document (nothing is truncated silently)"
            )
        out.append(Example(ids, max(len(p), 1) if prompt else 0))
    if not out:
        raise DataError(f"{path} holds no documents")
    return out
