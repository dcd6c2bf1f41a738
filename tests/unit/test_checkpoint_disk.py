"""Checkpoint writes that fail (issue 32): a save refused for space writes nothing; a write that
fails partway (a full disk, an I/O error, an interrupt) removes its temporary directory; either
way the last good checkpoint stays the newest and nothing is pruned."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from lmm_r1_ascend.engines.registry import DeepSpeedEngine, TorchEngine
from lmm_r1_ascend.trainer import checkpoint as ckpt


def _parts(directory):
    torch.save({"w": torch.randn(64)}, directory / "actor.pt")


def _names(tmp_path) -> list[str]:
    return sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir())


def test_a_save_refused_for_space_writes_nothing_and_prunes_nothing(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {}, _parts, keep=1)
    free = ckpt.free_bytes(ckpt.checkpoint_dir(tmp_path))
    with pytest.raises(ckpt.CheckpointSpaceError) as err:
        ckpt.save_checkpoint(tmp_path, 2, {}, _parts, keep=1, need_bytes=free + 10**12)
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt.checkpoint_dir(tmp_path)) in msg and "step_2" in msg
    assert f"needs ~{free + 10**12:,} bytes" in msg and "bytes free" in msg
    assert _names(tmp_path) == ["step_1"]
    ckpt.save_checkpoint(tmp_path, 2, {}, _parts, keep=1, need_bytes=1)  # enough space: written, then pruned
    assert _names(tmp_path) == ["step_2"]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 320"),
                                     KeyboardInterrupt()], ids=["enospc", "torch-writer", "interrupt"])
def test_a_write_failing_partway_removes_its_temporary_directory(tmp_path, failure):
    ckpt.save_checkpoint(tmp_path, 1, {"v": 1}, _parts, keep=1)

    def half_written(directory):
        _parts(directory)
        (directory / "actor_engine").mkdir()
        (directory / "actor_engine" / "engine.pt").write_bytes(os.urandom(4096))
        raise failure

    with pytest.raises(type(failure)):
        ckpt.save_checkpoint(tmp_path, 2, {"v": 2}, half_written, keep=1)
    assert _names(tmp_path) == ["step_1"]  # no .step_2.tmp holding the space, step_1 not pruned
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["v"] == 1


def test_size_estimate_and_measure(tmp_path):
    # per parameter: fp32 weights 4 + AdamW moments 2 x 4 (torch); DeepSpeed: + fp32 master and
    # moments (12) + its own copy of the weights (2 in bf16)
    # torch: fp32 weights + two fp32 moments; DeepSpeed bf16: weights, its copy, fp32 master + 2 moments
    assert ckpt.estimate_bytes(1000, TorchEngine.checkpoint_bytes_per_param(4), models=2) == 2 * 1000 * 12
    assert ckpt.estimate_bytes(1000, DeepSpeedEngine.checkpoint_bytes_per_param(2)) == 1000 * (2 + 2 + 12)
    ckpt.save_checkpoint(tmp_path, 1, {}, _parts)
    path = ckpt.latest_checkpoint(tmp_path)
    assert ckpt.directory_bytes(path) == sum(f.stat().st_size for f in path.iterdir())


def test_first_line_drops_tracebacks_and_cpp_frames():
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 320 vs 214\n"
                       "frame #0: c10::Error::Error + 0x9c\nframe #1: ...")
    assert ckpt.first_line(err) == "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 320 vs 214"
    assert ckpt.first_line(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"
