"""The SBD training layout (method doc section 2), one or many documents per row.

A document of ``n`` tokens whose trained part starts at ``start`` becomes one *segment*: its
``n`` clean tokens, then (SBD) a noisy copy of positions ``start..n-1`` where the slots drawn for
masking hold the mask token. Position ids restart at 0 in each segment and the noisy copy repeats
the positions it copies; its blocks of ``k`` tile from ``start``. A row holds one segment
(``seq_len`` 0: rows padded to the longest of the micro-batch) or, packed, as many whole segments
as fit in ``seq_len`` tokens; the mask (:func:`masks.sbd_mask_mod`) keeps documents apart.

Labels, one per token: a clean token's is the next token of its document when that one is
trained (NTP), a masked slot's is the token it hides (MATP); everything else is ``IGNORE``. The
loss of a micro-batch is (NTP sum + MATP sum) / its number of NTP targets.

Randomness: every draw of a micro-step (its k, which documents, each document's eta and masked
slots) comes from one generator seeded by (seed, step, micro), in a fixed order over the whole
global micro-batch, whatever the number of ranks; each rank then lays out only its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from .data import DataError, Example
from .masks import MaskMod, additive, dense_allowed, sbd_mask_mod

IGNORE = -100


@dataclass(frozen=True)
class Segment:
    """One document as laid out: its example, its block size and (SBD) which response slots are masked."""

    example: Example
    k: int
    masked: torch.Tensor | None  # bool [n - start], None for NTP

    def __len__(self) -> int:
        n = len(self.example.ids)
        return n + (n - self.example.start if self.masked is not None else 0)

    def ntp_targets(self) -> int:
        """How many NTP targets this document contributes."""
        n, start = len(self.example.ids), self.example.start
        return n - max(start, 1)


def draw_segment(example: Example, objective: str, k: int, gen: torch.Generator) -> Segment:
    """The document's eta and masked slots (SBD): the draws the old single-row layout made."""
    if objective != "sbd":
        return Segment(example, 1, None)
    r = len(example.ids) - example.start
    eta = torch.rand((), generator=gen)
    return Segment(example, k, torch.rand(r, generator=gen) < eta)


@dataclass
class Batch:
    """Tensors of one rank's share of a micro-batch, ``[R, T]`` each."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    doc: torch.Tensor  # document index in the row, -1 for padding
    noisy: torch.Tensor  # bool
    bstart: torch.Tensor  # block start position of noisy slots (0 elsewhere)

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(t.to(device, non_blocking=True) for t in self.__dict__.values()))

    def mask_mod(self) -> MaskMod:
        """The training mask of this batch as a FlexAttention ``mask_mod``."""
        return sbd_mask_mod(self.doc, self.noisy, self.position_ids, self.bstart)

    def dense_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The additive ``[R, 1, T, T]`` mask (SDPA) built from :meth:`mask_mod`."""
        r, t = self.input_ids.shape
        return additive(dense_allowed(self.mask_mod(), r, t, self.input_ids.device), dtype)

    def block_mask(self) -> BlockMask:
        """The sparse FlexAttention form of the same mask (no ``T x T`` matrix)."""
        r, t = self.input_ids.shape
        device = self.input_ids.device
        # compiled on CUDA: the mask is evaluated block by block, never as a [R, T, T] tensor
        return create_block_mask(self.mask_mod(), r, None, t, t, device=device, _compile=device.type == "cuda")


def layout(rows: list[list[Segment]], length: int, mask_id: int, pad_id: int) -> Batch:
    """Lay the segments of each row out in a ``[len(rows), length]`` batch."""
    shape = (len(rows), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    doc = torch.full(shape, -1, dtype=torch.long)
    noisy = torch.zeros(shape, dtype=torch.bool)
    bstart = torch.zeros(shape, dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for d, seg in enumerate(row):
            x = torch.tensor(seg.example.ids)
            n, start = len(x), seg.example.start
            first = max(start, 1)
            ids[i, at : at + n] = x
            pos[i, at : at + n] = torch.arange(n)
            labels[i, at + first - 1 : at + n - 1] = x[first:]
            doc[i, at : at + n] = d
            at += n
            if seg.masked is not None:
                r = n - start
                slot = torch.arange(r)
                sl = slice(at, at + r)
                ids[i, sl] = torch.where(seg.masked, mask_id, x[start:])
                pos[i, sl] = start + slot
                labels[i, sl] = torch.where(seg.masked, x[start:], IGNORE)
                doc[i, sl] = d
                noisy[i, sl] = True
                bstart[i, sl] = start + (slot // seg.k) * seg.k
                at += r
        if at > length:
            raise AssertionError(f"row {i} holds {at} tokens, more than its {length}")
    return Batch(ids, pos, labels, doc, noisy, bstart)


class Plan:
    """Which documents each micro-step of the run trains on, a function of (seed, step, micro).

    Unpacked (``seq_len`` 0): ``rows`` documents drawn at random, one a row. Packed: documents in
    the order of a per-epoch permutation, from a cursor that the checkpoint stores, until
    ``rows`` rows of ``seq_len`` tokens are full (the document that did not fit opens the next
    micro-step).
    """

    def __init__(
        self,
        docs: Sequence[Example],
        *,
        objective: str,
        k_min: int,
        k_max: int,
        rows: int,
        seq_len: int,
        seed: int,
    ) -> None:
        self.docs, self.objective, self.k_min, self.k_max = docs, objective, k_min, k_max
        self.rows, self.seq_len, self.seed = rows, seq_len, seed
        self.cursor = 0  # documents consumed so far (packed)
        self._perm: tuple[int, torch.Tensor] | None = None

    def _doc_at(self, g: int) -> int:
        epoch, i = divmod(g, len(self.docs))
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._perm = (epoch, torch.randperm(len(self.docs), generator=gen))
        return int(self._perm[1][i])

    def micro(self, gen: torch.Generator) -> tuple[list[list[Segment]], int]:
        """The rows of the next global micro-batch and its length (tokens per row)."""
        k = int(torch.randint(self.k_min, self.k_max + 1, (), generator=gen))
        if not self.seq_len:
            idx = torch.randint(len(self.docs), (self.rows,), generator=gen)
            segs = [draw_segment(self.docs[int(i)], self.objective, k, gen) for i in idx]
            return [[s] for s in segs], max(len(s) for s in segs)
        rows: list[list[Segment]] = []
        used = 0
        while True:
            i = self._doc_at(self.cursor)
            seg = draw_segment(self.docs[i], self.objective, k, gen)
            if len(seg) > self.seq_len:
                where = self.docs.corpus.where(i) if hasattr(self.docs, "corpus") else f"document {i}"
                raise DataError(
                    f"{where}: the document lays out to {len(seg)} tokens (clean + noisy copy), more than "
                    f"--seq-len {self.seq_len}; raise --seq-len or shorten the document"
                )
            if not rows or used + len(seg) > self.seq_len:
                if len(rows) == self.rows:
                    return rows, self.seq_len  # this document opens the next micro-step
                rows.append([])
                used = 0
            rows[-1].append(seg)
            used += len(seg)
            self.cursor += 1
