"""setblock_export: SBD fine-tuning, ONNX export, verification and the reference decoder."""

FORMAT_VERSION = 1

# the kv_layout the exporter writes (docs/model-format.md): past/presents packed as
# [batch, seq, kv_heads * head_dim], the same memory as the older "sequence-major" 4-D form
KV_SEQUENCE_MAJOR_PACKED = "sequence-major-packed"
# `export --fused-attention`: one [batch, kv_heads, capacity, head_dim] buffer per layer that
# GroupQueryAttention reads as the past and writes this forward's K/V into (fused_attention.py)
KV_HEAD_MAJOR_SHARED = "head-major-shared"
