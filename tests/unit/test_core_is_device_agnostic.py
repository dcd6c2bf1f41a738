"""Lint: the core never names a device; device differences live in backends/ and kernels/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile(r"""torch\.cuda|torch\.npu|torch_npu|flash_attn|["']nccl["']|["']hccl["']|\.cuda\(\)""")


def find_device_mentions(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(root.parent)}:{lineno}: {line.strip()}")
    return hits


def test_core_names_no_device():
    hits = find_device_mentions(ROOT / "lmm_r1_ascend")
    assert not hits, "device-specific code in the core (move it behind backends/ or kernels/):\n" + "\n".join(hits)


def test_lint_catches_a_planted_mention(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\nx = torch.cuda.is_available()\ny = 'hccl'\n")
    (tmp_path / "good.py").write_text("backend = get_backend('auto')\n")
    hits = find_device_mentions(tmp_path)
    assert [h.split(":")[1] for h in hits] == ["2", "3"]
