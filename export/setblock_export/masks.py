"""The attention masks of SBD: the training mask (method doc section 2) and the inference mask.

Boolean "may attend" matrices are built here; ``additive`` turns them into the float masks the
graph takes (0 = attend, ``finfo.min`` = blocked). Never feed a bool 4-D mask to the model.

Training uses :func:`sbd_mask_mod`, one rule over per-token metadata of a (possibly packed) row,
in the ``mask_mod`` form of FlexAttention (``torch.nn.attention.flex_attention``): on CUDA it
becomes a sparse ``BlockMask``, on CPU the dense matrix SDPA takes, from the same function.
``training_allowed`` is the method document's single-sequence form, kept as the reference the
tests hold the mask_mod to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sbd_mask_mod(doc: torch.Tensor, noisy: torch.Tensor, pos: torch.Tensor, bstart: torch.Tensor) -> MaskMod:
    """The training mask as a FlexAttention ``mask_mod(b, h, q, kv) -> may attend``.

    Per-token metadata, each ``[B, T]``: ``doc`` the document a token belongs to inside its row
    (-1 for padding), ``noisy`` whether it is a slot of the noisy copy, ``pos`` its position in
    its document, ``bstart`` (noisy slots) the position where its block begins. The rule (paper
    Figs. 9-10, per document): a clean token sees the clean tokens of its document up to itself;
    a noisy slot sees the clean tokens of its document before its block and every slot of its
    block; nothing crosses documents; padding sees only itself (no row is empty).
    """

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # noqa: ARG001
        dq, dk = doc[b, q], doc[b, kv]
        nq, nk = noisy[b, q], noisy[b, kv]
        pq, pk, bq = pos[b, q], pos[b, kv], bstart[b, q]
        clean_clean = ~nq & ~nk & (pk <= pq)
        noisy_clean = nq & ~nk & (pk < bq)
        noisy_noisy = nq & nk & (bq == bstart[b, kv])
        same_doc = (dq == dk) & (dq >= 0)
        return (same_doc & (clean_clean | noisy_clean | noisy_noisy)) | (q == kv)

    return mask_mod


def dense_allowed(mask_mod: MaskMod, batch: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``mask_mod`` evaluated at every (query, key) pair: bool ``[B, T, T]``."""
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(length, device=device)[None, :, None]
    kv = torch.arange(length, device=device)[None, None, :]
    return mask_mod(b, torch.zeros((), dtype=torch.long, device=device), q, kv).expand(batch, length, length)


def additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """bool may-attend -> additive float mask with a head axis: ``[..., Q, K] -> [B, 1, Q, K]``."""
    m = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    m.masked_fill_(~allowed, torch.finfo(dtype).min)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    return m.unsqueeze(1)


def training_allowed(length: int, start: int, k: int, total_clean: int, total_noisy: int) -> torch.Tensor:
    """May-attend matrix for one training sequence laid out as [clean | noisy].

    length: real clean tokens (the rest of ``total_clean`` is padding). start: first trained
    position; the noisy half holds copies of positions ``start..length-1`` and its blocks of ``k``
    tile from ``start`` (``start`` = 0 for plain text: the method document's layout).
    Returns bool ``[T, T]`` with ``T = total_clean + total_noisy``.
    """
    t = total_clean + total_noisy
    allowed = torch.zeros(t, t, dtype=torch.bool)
    q = torch.arange(total_clean)
    # clean -> clean: causal (padding rows too, so no row is empty)
    allowed[:total_clean, :total_clean] = q[None, :] <= q[:, None]
    real_noisy = length - start
    slot = torch.arange(total_noisy)
    block = slot // k
    block_start = start + block * k  # sequence position where each slot's block begins
    # noisy -> clean tokens strictly before its own block (never its own block's clean copy)
    allowed[total_clean:, :total_clean] = q[None, :] < block_start[:, None]
    # noisy -> noisy: bidirectional inside the block, real slots only
    same = (block[:, None] == block[None, :]) & (slot[None, :] < real_noisy)
    allowed[total_clean:, total_clean:] = same
    pad = slot >= real_noisy
    allowed[total_clean + slot[pad], :] = False
    allowed[total_clean + slot[pad], total_clean + slot[pad]] = True  # padding sees itself only
    return allowed


def step_allowed(past: int, causal: int, block: int) -> torch.Tensor:
    """May-attend matrix of one inference forward: ``causal`` clean tokens then ``block`` slots.

    Rows are the ``causal + block`` new tokens, columns ``past + causal + block`` keys. Clean rows:
    all the past and the new clean tokens up to themselves. Block rows: all the past, all the new
    clean tokens and every slot of the block (bidirectional).
    """
    n = causal + block
    allowed = torch.zeros(n, past + n, dtype=torch.bool)
    allowed[:, :past] = True
    r = torch.arange(causal)
    allowed[:causal, past : past + causal] = r[None, :] <= r[:, None]
    allowed[causal:, past:] = True
    return allowed
