"""The SBD training layout of method doc section 2."""

import torch

from setblock_export.data import Example
from setblock_export.masks import step_allowed, training_allowed
from setblock_export.train import IGNORE, make_batch


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


def test_batch_positions_repeat_and_only_masked_slots_carry_loss() -> None:
    gen = torch.Generator().manual_seed(3)
    ex = [Example(list(range(10, 22)), 4), Example(list(range(30, 39)), 0)]
    b = make_batch(ex, "sbd", 4, mask_id=2, pad_id=1, gen=gen)
    lmax = b.clean_len
    assert lmax == 12
    # position ids: clean 0..L-1, noisy copies repeat the positions they copy
    assert b.position_ids[0, :12].tolist() == list(range(12))
    assert b.position_ids[0, 12:20].tolist() == list(range(4, 12))
    assert b.position_ids[1, 12:21].tolist() == list(range(0, 9))
    noisy = b.input_ids[:, lmax:]
    for i, e in enumerate(ex):
        r = len(e.ids) - e.start
        orig = torch.tensor(e.ids[e.start :])
        masked = noisy[i, :r] == 2
        # masked slots are the loss targets, unmasked noisy slots carry no loss
        assert torch.equal(b.matp_targets[i, :r][masked], orig[masked])
        assert (b.matp_targets[i, :r][~masked] == IGNORE).all()
        assert torch.equal(noisy[i, :r][~masked], orig[~masked])
        assert (b.matp_targets[i, r:] == IGNORE).all()
    # NTP targets: the response only (example 0 starts at 4), everything after position 0 for text
    assert (b.ntp_targets[0, :3] == IGNORE).all() and b.ntp_targets[0, 3:11].tolist() == list(range(14, 22))
    assert b.ntp_targets[1, :8].tolist() == list(range(31, 39))
    # the NTP batch has no noisy half
    n = make_batch(ex, "ntp", 4, mask_id=2, pad_id=1, gen=gen)
    assert n.input_ids.shape[1] == 12 and n.matp_targets.numel() == 0
