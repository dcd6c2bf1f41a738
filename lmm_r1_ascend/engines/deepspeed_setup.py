"""DeepSpeed set-up helpers of the DeepSpeed engine (engines/deepspeed_engine.py): its config
dict, the universal-checkpoint conversion, and keeping DeepSpeed from JIT-building an op training
never uses. deepspeed is imported only inside the functions."""

from __future__ import annotations

from pathlib import Path


def deepspeed_config(*, zero_stage: int, bf16: bool, max_norm: float, offload_optimizer: bool,
                     offload_params: bool) -> dict:
    """The DeepSpeed config dict; ValueError for what the engine does not support."""
    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if offload_params and zero_stage != 3:
        raise ValueError(f"offload_params needs zero_stage=3 (got {zero_stage}): only ZeRO-3 partitions parameters")
    if offload_optimizer and zero_stage == 0:
        raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3: ZeRO-0 does not manage the optimizer state")
    zero: dict = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        # The engine marks boundaries itself: DeepSpeed must not divide losses by a step count.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(max_norm) if max_norm > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        # Keep the torch optimizer under ZeRO and under offload (no DeepSpeedCPUAdam JIT build).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's universal checkpoint of the ZeRO checkpoint folder ``source`` (one tag) in ``target``:
    per parameter, its full fp32 master weights and optimizer moments, loadable on any world size.
    In this process (no worker pool: Ray actors and spawned ranks may not fork one), quietly; a
    `.complete` marker is written last, so an interrupted conversion is redone."""
    import argparse
    import contextlib
    import io
    import shutil

    from deepspeed.checkpoint.ds_to_universal import main as convert

    shutil.rmtree(target, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(source), output_folder=str(target), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # our client state has no universal_checkpoint_info
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert(args)
    (target / ".complete").write_text("")


def disable_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-building its shared-memory all-reduce op (about 1.5 min on 2 CPU cores).

    DeepSpeed builds that op when it sets up its communication backend on the CPU accelerator,
    but only tensor-parallel inference (inference_all_reduce) uses it; training goes through
    torch.distributed. The op is looked up in ``deepspeed.ops.__compatible_ops__`` (deepspeed/comm/
    torch.py, build_shm_op), which nothing else reads; pre-setting that dict also skips probing
    every op's compiler. Call it before ``deepspeed.init_distributed`` if you call that yourself;
    the engine calls it before ``deepspeed.initialize``.
    """
    import deepspeed.ops

    if "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
