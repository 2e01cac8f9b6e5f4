"""The attention masks of SBD: the training mask (method doc section 2) and the inference mask.

Boolean "may attend" matrices are built here; ``additive`` turns them into the float masks the
graph takes (0 = attend, ``finfo.min`` = blocked). Never feed a bool 4-D mask to the model.
"""

from __future__ import annotations

import torch


def additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """bool may-attend -> additive float mask with a head axis: ``[..., Q, K] -> [B, 1, Q, K]``."""
    m = torch.zeros(allowed.shape, dtype=dtype)
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
