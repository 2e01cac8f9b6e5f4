"""setblock_export: SBD fine-tuning, ONNX export, verification and the reference decoder."""

FORMAT_VERSION = 1
