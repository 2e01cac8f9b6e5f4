"""CUDA checks of the training loop's attention paths (run by bench/gpu_finetune.sh on a GPU machine).

On a tiny random Llama and a packed SBD batch: the loss and every gradient through compiled
FlexAttention (BlockMask, no dense matrix) equal those through SDPA with the dense mask built from
the same mask_mod, in fp32; in bf16 autocast, within bf16 tolerance. Exits non-zero on a mismatch.
"""

from __future__ import annotations

import sys

import torch
from setblock_export.batches import Plan, layout
from setblock_export.data import Example
from setblock_export.train import SBDLoss, step_generator
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_checks: no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(cfg).to(dev)
    gen = torch.Generator().manual_seed(1)
    docs = []
    for _ in range(64):
        n = int(torch.randint(20, 120, (), generator=gen))
        start = int(torch.randint(0, n // 2, (), generator=gen))
        docs.append(Example(torch.randint(3, 300, (n,), generator=gen).tolist(), start))
    plan = Plan(docs, objective="sbd", k_min=2, k_max=16, rows=4, seq_len=512, seed=0)
    rows, length = plan.micro(step_generator(0, 0, 0))
    batch = layout(rows, length, mask_id=2, pad_id=1).to(dev)
    module = SBDLoss(model)
    failures = 0
    for dtype, rtol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        results = []
        for mask in (batch.dense_mask(), batch.block_mask()):
            module.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = module(batch.input_ids, batch.position_ids, batch.labels, mask)
            loss.backward()
            results.append((float(loss), {n: p.grad.detach().clone() for n, p in module.named_parameters()}))
        (ld, gd), (lf, gf) = results
        worst = max(float((gd[n] - gf[n]).norm() / gd[n].norm().clamp_min(1e-12)) for n in gd)
        ok = abs(ld - lf) <= rtol * abs(ld) and worst <= 10 * rtol
        failures += not ok
        print(
            f"{dtype}: loss sdpa {ld:.6f} flex {lf:.6f}; worst relative gradient difference {worst:.2e}: "
            f"{'ok' if ok else 'MISMATCH'}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
