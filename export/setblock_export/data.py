"""Training data: ``.jsonl`` prompt/response pairs or ``.txt`` documents, streamed from disk.

- ``.jsonl``: one object per line with ``prompt`` and ``response`` (strings). The loss covers the
  response only (its NTP targets and its noisy copy); the prompt is context. EOS is appended to
  the response. The prompt gets the tokenizer's BOS first, unless it already starts with the BOS
  text (a prompt rendered by a chat template, tokenized as the runtime tokenizes it).
- ``.txt``: documents separated by one or more blank lines; every token is trained (start = 0),
  EOS appended.

:class:`Corpus` holds only the byte offset and line number of each document (16 bytes a row),
never the text: a row is read and tokenized when a batch asks for it, so a file of any size
streams. The index pass checks every ``.jsonl`` row's shape up front (file and line in the
error); a row too long for the model is reported, with its file and line, when it is first read.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """Token ids of one document and the first trained position."""

    ids: list[int]
    start: int


class DataError(ValueError):
    """A training file that cannot be used as it is."""


def _parse_jsonl(path: Path, n: int, line: bytes) -> tuple[str, str]:
    try:
        row = json.loads(line)
        prompt, response = row["prompt"], row["response"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}:{n}: expected a JSON object with 'prompt' and 'response' ({e})") from e
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(f"{path}:{n}: 'prompt' and 'response' must be strings")
    return prompt, response


class Corpus:
    """Random access to the documents of a training file, by index, without loading the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"training data {self.path} does not exist")
        if self.path.suffix not in (".jsonl", ".txt"):
            raise DataError(f"training data {self.path}: use a .jsonl (prompt/response) or .txt (documents) file")
        self.offsets, self.lengths, self.lines = array("q"), array("q"), array("q")
        (self._index_jsonl if self.path.suffix == ".jsonl" else self._index_txt)()
        if not self.offsets:
            raise DataError(f"{self.path} holds no documents")
        self._file = self.path.open("rb")

    def _index_jsonl(self) -> None:
        offset = 0
        with self.path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    _parse_jsonl(self.path, n, line)
                    self._add(offset, len(line), n)
                offset += len(line)

    def _index_txt(self) -> None:
        offset, start, first_line = 0, None, 0
        with self.path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    if start is None:
                        start, first_line = offset, n
                elif start is not None:
                    self._add(start, offset - start, first_line)
                    start = None
                offset += len(line)
        if start is not None:
            self._add(start, offset - start, first_line)

    def _add(self, offset: int, length: int, line: int) -> None:
        self.offsets.append(offset)
        self.lengths.append(length)
        self.lines.append(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        """``file:line`` of document ``i`` (for error messages)."""
        return f"{self.path}:{self.lines[i]}"

    def text(self, i: int) -> tuple[str, str]:
        """(prompt, response) of document ``i``; a ``.txt`` document is all response."""
        self._file.seek(self.offsets[i])
        raw = self._file.read(self.lengths[i])
        if self.path.suffix == ".jsonl":
            return _parse_jsonl(self.path, self.lines[i], raw)
        try:
            return "", raw.decode("utf-8").strip("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{self.where(i)}: not UTF-8 ({e})") from e

    def __iter__(self):  # noqa: ANN204 - iterator of (prompt, response)
        return (self.text(i) for i in range(len(self)))


class Tokenized:
    """Documents of a :class:`Corpus` as token ids, tokenized on demand, length-checked."""

    def __init__(self, corpus: Corpus, tokenizer, eos_id: int, max_length: int) -> None:  # noqa: ANN001
        self.corpus, self.tokenizer, self.eos_id, self.max_length = corpus, tokenizer, eos_id, max_length
        self.bos = getattr(tokenizer, "bos_token_id", None)
        # a prompt rendered by a chat template that starts with the BOS text gets no second BOS
        self.bos_text = getattr(tokenizer, "bos_token", None) or "\0"

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> Example:
        prompt, response = self.corpus.text(i)
        bos = [self.bos] if self.bos is not None and not prompt.startswith(self.bos_text) else []
        p = bos + self.tokenizer.encode(prompt, add_special_tokens=False)
        r = self.tokenizer.encode(response, add_special_tokens=False) + [self.eos_id]
        ids = p + r
        if len(ids) > self.max_length:
            raise DataError(
                f"{self.corpus.where(i)}: {len(ids)} tokens exceed the model's {self.max_length} positions; "
                "shorten or split the document (nothing is truncated silently)"
            )
        return Example(ids, max(len(p), 1) if prompt else 0)


def document_texts(path: Path) -> list[str]:
    """Full document texts (prompt + response), for tokenizer training (reads them all)."""
    return [p + r for p, r in Corpus(path)]


def encode(path: Path, tokenizer, eos_id: int, max_length: int) -> list[Example]:  # noqa: ANN001
    """Tokenize every row (in memory; for small files). Too long a document is an error, never truncated."""
    docs = Tokenized(Corpus(path), tokenizer, eos_id, max_length)
    return [docs[i] for i in range(len(docs))]
