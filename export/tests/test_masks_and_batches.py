"""The SBD training layout of method doc section 2: the mask, its mask_mod form (dense for SDPA,
sparse for FlexAttention), packing, and the labels."""

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from setblock_export.batches import IGNORE, Batch, Segment, draw_segment, layout
from setblock_export.data import Example
from setblock_export.masks import dense_allowed, step_allowed, training_allowed


def rows(allowed: torch.Tensor) -> list[str]:
    return ["".join("1" if x else "." for x in r.tolist()) for r in allowed]


def test_n8_k4_mask_equals_the_method_document() -> None:
    m = rows(training_allowed(8, 0, 4, 8, 8))
    # the four rows the document prints: clean x1, clean x5, noisy block 0, noisy block 1
    assert m[0] == "1......." + "........"
    assert m[4] == "11111..." + "........"
    assert all(m[8 + i] == "........" + "1111...." for i in range(4))
    assert all(m[12 + i] == "1111...." + "....1111" for i in range(4))
    # and every clean row is causal, never seeing the noisy half
    for q in range(8):
        assert m[q] == "1" * (q + 1) + "." * (15 - q)


def test_blocks_tile_from_the_response_start_and_padding_is_isolated() -> None:
    m = rows(training_allowed(6, 3, 2, 8, 4))
    assert m[8] == m[9] == "111....." + "11.."  # block of positions 3-4: clean 0-2
    assert m[10] == "11111..." + "..1."  # block of position 5: clean 0-4
    assert m[11] == "........" + "...1"  # padding slot sees itself only


def test_step_mask_block_rows_see_everything_clean_rows_are_causal() -> None:
    m = rows(step_allowed(2, 2, 3))
    assert m == ["111....", "1111...", "1111111", "1111111", "1111111"]


def _segment(n: int, start: int, k: int, seed: int = 0, first: int = 10) -> Segment:
    return draw_segment(Example(list(range(first, first + n)), start), "sbd", k, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "start", "k"), [(8, 0, 4), (6, 3, 2), (12, 4, 4), (9, 1, 16), (5, 2, 1), (13, 5, 3)])
def test_the_mask_mod_is_the_method_documents_mask_for_one_document(n: int, start: int, k: int) -> None:
    b = layout([[_segment(n, start, k)]], n + (n - start), mask_id=2, pad_id=1)
    dense = dense_allowed(b.mask_mod(), 1, b.input_ids.shape[1])[0]
    assert torch.equal(dense, training_allowed(n, start, k, n, n - start))


def test_packed_documents_never_see_each_other_and_restart_positions_and_blocks() -> None:
    segs = [_segment(7, 2, 2, seed=1), _segment(5, 0, 4, seed=2, first=40), _segment(6, 3, 2, seed=3, first=60)]
    length = sum(len(s) for s in segs) + 3  # three padding tokens at the end
    b = layout([segs], length, mask_id=2, pad_id=1)
    dense = dense_allowed(b.mask_mod(), 1, length)[0]
    at = 0
    for d, s in enumerate(segs):
        n, start = len(s.example.ids), s.example.start
        span = slice(at, at + len(s))
        # inside its span, each document has exactly its own single-document mask...
        assert torch.equal(dense[span, span], training_allowed(n, start, s.k, n, n - start)), d
        # ...and nothing outside it, in either direction
        assert not dense[span, :at].any() and not dense[span, at + len(s) :].any()
        assert not dense[:at, span].any() and not dense[at + len(s) :, span].any()
        assert b.position_ids[0, at : at + n].tolist() == list(range(n))  # positions restart
        assert b.position_ids[0, at + n : at + len(s)].tolist() == list(range(start, n))
        at += len(s)
    assert torch.equal(dense[at:, :], torch.eye(length, dtype=torch.bool)[at:])  # padding: itself only
    assert (b.labels[0, at:] == IGNORE).all()


def test_positions_repeat_and_only_masked_slots_and_responses_carry_labels() -> None:
    gen = torch.Generator().manual_seed(3)
    ex = [Example(list(range(10, 22)), 4), Example(list(range(30, 39)), 0)]
    segs = [draw_segment(e, "sbd", 4, gen) for e in ex]
    b = layout([[s] for s in segs], 21, mask_id=2, pad_id=1)
    assert b.position_ids[0, :12].tolist() == list(range(12))
    assert b.position_ids[0, 12:20].tolist() == list(range(4, 12))
    assert b.position_ids[1, 9:18].tolist() == list(range(0, 9))
    for i, (e, s) in enumerate(zip(ex, segs, strict=True)):
        n, r = len(e.ids), len(e.ids) - e.start
        orig = torch.tensor(e.ids[e.start :])
        noisy_ids, noisy_labels = b.input_ids[i, n : n + r], b.labels[i, n : n + r]
        assert torch.equal(noisy_ids == 2, s.masked)
        assert torch.equal(noisy_labels[s.masked], orig[s.masked])  # masked slots: the hidden token
        assert (noisy_labels[~s.masked] == IGNORE).all() and torch.equal(noisy_ids[~s.masked], orig[~s.masked])
        assert (b.labels[i, n + r :] == IGNORE).all() and (b.input_ids[i, n + r :] == 1).all()
    # NTP labels: the response only (example 0 starts at 4), everything after position 0 for text
    assert (b.labels[0, :3] == IGNORE).all() and b.labels[0, 3:11].tolist() == list(range(14, 22))
    assert b.labels[0, 11] == IGNORE  # the last clean token has no next token
    assert b.labels[1, :8].tolist() == list(range(31, 39))
    assert [s.ntp_targets() for s in segs] == [8, 8]
    # the NTP objective lays out no noisy copy
    n = layout([[draw_segment(e, "ntp", 1, gen)] for e in ex], 12, mask_id=2, pad_id=1)
    assert not n.noisy.any() and (n.input_ids != 2).all()


def _packed_batch() -> Batch:
    a = [_segment(7, 2, 2, seed=1), _segment(5, 0, 4, seed=2, first=40)]
    c = [_segment(13, 5, 3, seed=3, first=60)]
    return layout([a, c], 40, mask_id=2, pad_id=1)


def test_flex_attention_applies_exactly_the_dense_mask() -> None:
    """Every (query, key) pair: with equal scores, attention weights are 1/|allowed| on allowed keys
    and exactly 0 elsewhere; V = identity reads the weights out of FlexAttention and SDPA alike."""
    b = _packed_batch()
    r, t = b.input_ids.shape
    allowed = dense_allowed(b.mask_mod(), r, t)
    q = torch.zeros(r, 1, t, 16)
    v = torch.eye(t).expand(r, 1, t, t).contiguous()
    flex = flex_attention(q, q, v, block_mask=b.block_mask())
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, q, v, attn_mask=b.dense_mask())
    want = allowed.float() / allowed.sum(-1, keepdim=True)
    assert torch.equal(flex[:, 0] > 0, allowed)
    assert torch.equal(sdpa[:, 0] > 0, allowed)
    torch.testing.assert_close(flex[:, 0], want)
    torch.testing.assert_close(sdpa[:, 0], want)
