"""The DeepSpeed training engine: ZeRO stages 0-3 under data parallelism, behind the
interface of engines/base.py.

Before constructing it the caller sets DS_ACCELERATOR from its backend (before anything
imports deepspeed) and creates the process group with the backend's string: this module
never picks a device. The optimizer is TorchEngine's torch AdamW(foreach=False) and
transformers schedule, handed to DeepSpeed, so no fused optimizer is JIT-built. On NPU
(DS_ACCELERATOR=npu: DeepSpeed's NPU_Accelerator, communication backend hccl) a config-named
optimizer would be FusedAdam through DeepSpeed's NPU op builder (torch._fused_adamw_ on npu
tensors, no build); the torch AdamW is kept there too: one update rule on every device, the one
CI checks (tests/vendor/test_runtime_ds_ray.py).

Gradients (DeepSpeed 0.19.8): every stage AVERAGES gradients over the data-parallel ranks
(the reduction divides by the world size), and with gradient_accumulation_steps=1 nothing
else scales them. With ``loss_scale_world=True`` ``backward`` multiplies each loss by the
data-parallel world size, so micro-batch losses normalised by the GLOBAL mini-batch
normaliser give exactly the single-process mini-batch gradient. Accumulation boundaries
come from ``backward(..., last=True)`` (DeepSpeed's set_gradient_accumulation_boundary).

Non-finite steps (engines/base.py) are skipped by DeepSpeed's own overflow mechanism: its ZeRO
1-3 and bf16 optimizers find the non-finite global grad norm (all-reduced, so every rank decides
alike), clear the gradients and skip the update, and its engine then leaves the LR schedule
where it was and counts the step in ``skipped_steps``. ZeRO-0 in fp32 steps the torch optimizer
directly and checks nothing: there the engine's own norm (already the same on every rank) decides,
the gradients are zeroed, the torch optimizer's step is a no-op for that call, and its
``overflow`` flag, which DeepSpeed's engine reads to skip the schedule and count the skip, is set.

Forwards must call ``engine.module`` (DeepSpeed's engine object, which runs the model's
forward) with the WHOLE loss computation inside that one forward: DeepSpeed's micro-step
count (ZeRO-3 otherwise overwrites instead of accumulating gradients) hangs on that call,
and ZeRO-3 only gathers a parameter touched outside a submodule's own forward (a tied LM
head's weight) while the top-level forward runs. Wrap a computation such as
models.forward.packed_log_probs in a small nn.Module and hand that module to the engine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmm_r1_ascend.config.errors import SetupError
from lmm_r1_ascend.engines.base import nonfinite_names, nonfinite_weights_error, poison_nonfinite
from lmm_r1_ascend.engines.deepspeed_setup import deepspeed_config, disable_shm_comm_build, to_universal
from lmm_r1_ascend.engines.torch_engine import build_optimizer, optim_kwargs

if TYPE_CHECKING:
    from lmm_r1_ascend.config.schema import DistributedConfig, OptimConfig

TAG = "engine"  # the DeepSpeed checkpoint tag (sub-folder) inside the save directory
META_FILE = "engine_meta.json"
UNIVERSAL = "universal"  # DeepSpeed's universal checkpoint of TAG, made when another world size resumes it
REDUCE_BUCKET = 500_000_000  # DeepSpeed's zero_optimization.reduce_bucket_size default (deepspeed_config keeps it)

__all__ = ["DeepSpeedEngine", "deepspeed_config", "disable_shm_comm_build", "to_universal"]


class DeepSpeedEngine:
    """One model trained with DeepSpeed on every data-parallel rank (construction is collective).

    module: the model; its forward holds the whole loss computation (see the module docstring).
    lr, betas, weight_decay, max_norm, total_steps, scheduler, min_lr_ratio, warmup_ratio: as TorchEngine.
    zero_stage: 0-3. bf16: bf16 weights and compute, fp32 master weights. offload_optimizer:
    optimizer state and master weights on CPU (stages 1-3). offload_params: parameters on CPU (stage 3).
    loss_scale_world: multiply each loss by the data-parallel world size (see the module docstring).

    Class-level facts: as TorchEngine's (engines/registry.py), for DeepSpeed's ZeRO stages.
    """

    name = "deepspeed"
    data_parallel = True

    @staticmethod
    def require() -> None:
        """SetupError, one line, when DeepSpeed is not installed (this module imports it only
        inside functions, so without this probe the user would meet a raw ModuleNotFoundError)."""
        if importlib.util.find_spec("deepspeed") is None:
            raise SetupError("distributed.train_engine=deepspeed needs DeepSpeed, which is not installed: "
                             "pip install 'lmm-r1-ascend[dist]' (or the requirements file of your device)")

    @staticmethod
    def describe(dist: DistributedConfig) -> str:
        return f"deepspeed ZeRO-{dist.zero_stage}"

    @staticmethod
    def shards_weights(dist: DistributedConfig) -> bool:
        """ZeRO-3 partitions the parameters: each rank holds a shard and gathers a layer to use it."""
        return dist.zero_stage == 3

    @staticmethod
    def resumes_on_any_world_size(dist: DistributedConfig) -> bool:
        """ZeRO 1-3 checkpoints convert to DeepSpeed's universal checkpoint; ZeRO-0's do not."""
        return dist.zero_stage != 0

    @staticmethod
    def checkpoint_bytes_per_param(dtype_bytes: int) -> int:
        """The weights in the model dtype, DeepSpeed's own copy of them, its fp32 master and two fp32 moments."""
        return 2 * dtype_bytes + 12

    @staticmethod
    def model_states(n: int, trainable: int, *, dist: DistributedConfig, devices: int, b: int, largest: int
                     ) -> tuple[dict[str, float], float]:
        """Planner: (weights, gradients, optimizer, buckets) bytes on one device and the bytes
        offloaded to the host. bf16 (b=2): 2 B weights, 2 B grads, 4 B fp32 grads, 4 B fp32 master,
        8 B moments per trainable parameter (DeepSpeed's estimate_zero2_model_states_mem_needs
        breakdown), split over the devices by ZeRO stage (1: optimizer; 2: + grads; 3: + weights,
        plus the gathered largest layer), moved to the host by offload_optimizer / offload_params."""
        zero = dist.zero_stage
        bf16 = b == 2
        w, g_low, g32, master, moments = (2 if bf16 else 4), (2 if bf16 else 0), 4, (4 if bf16 else 0), 8
        d = devices
        weights = n * w / d + largest * w if zero == 3 else n * w  # ZeRO-3: own shard + the gathered layer
        grads = trainable * (g_low / d if zero >= 2 else g_low) + trainable * g32 / (d if zero >= 2 else 1)
        optim = trainable * (master + moments) / (d if zero >= 1 else 1)
        # ZeRO-2/3 reduce gradients through a flat bucket of reduce_bucket_size (DeepSpeed's default
        # 5e8) elements; pages of it count once written, i.e. up to the trainable parameters.
        buckets = min(REDUCE_BUCKET, trainable) * (2 if bf16 else 4) if zero >= 2 else 0.0
        host = 0.0
        if dist.offload_optimizer:
            host += optim + trainable * g32 / d
            grads -= trainable * g32 / d
            optim = 0.0
        if dist.offload_params:
            host += n * w / d
            weights = largest * w
        return {"weights": weights, "gradients": grads, "optimizer": optim, "buckets": buckets}, host

    @staticmethod
    def library_estimate(params: int, largest_layer: int, devices: int,
                         dist: DistributedConfig) -> dict[str, float]:
        """Planner: DeepSpeed's own model-state estimates in bytes per device (bf16/fp16 mixed
        precision), for comparison with model_states; {} without DeepSpeed."""
        try:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
        except ImportError:
            return {}
        _, z3, _ = estimate_zero3_model_states_mem_needs(params, largest_layer, devices, 1,
                                                         cpu_offload=dist.offload_optimizer,
                                                         cpu_offload_params=dist.offload_params)
        _, z2 = estimate_zero2_model_states_mem_needs(params, devices, 1, cpu_offload=dist.offload_optimizer)
        return {"zero2_per_device": z2, "zero3_per_device": z3}

    @staticmethod
    def moments_share(b: int) -> float:
        """Planner: the moments' part of the optimizer bytes (bf16: 8 of master + moments' 12)."""
        return 8 / 12 if b == 2 else 1.0

    @classmethod
    def from_config(cls, module: torch.nn.Module, optim: OptimConfig, dist: DistributedConfig, *, lr: float,
                    total_steps: int) -> DeepSpeedEngine:
        """The engine for `module` from the optim and distributed config sections (bf16 when the
        module's weights are); SetupError when DeepSpeed is missing."""
        cls.require()
        return cls(module, zero_stage=dist.zero_stage, bf16=next(module.parameters()).dtype == torch.bfloat16,
                   offload_optimizer=dist.offload_optimizer, offload_params=dist.offload_params,
                   **optim_kwargs(optim, lr=lr, total_steps=total_steps))

    def __init__(self, module: torch.nn.Module, *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.0, max_norm: float = 1.0, total_steps: int = 1,
                 scheduler: str = "cosine_with_min_lr", min_lr_ratio: float = 0.1, warmup_ratio: float = 0.03,
                 zero_stage: int = 2, bf16: bool = False, offload_optimizer: bool = False,
                 offload_params: bool = False, loss_scale_world: bool = True):
        config = deepspeed_config(zero_stage=zero_stage, bf16=bf16, max_norm=max_norm,
                                  offload_optimizer=offload_optimizer, offload_params=offload_params)
        if not os.environ.get("DS_ACCELERATOR"):
            raise RuntimeError("DS_ACCELERATOR is not set: set it from the backend (Backend.ds_accelerator) "
                               "before deepspeed is imported, or DeepSpeed guesses the device")
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("no process group: create it first with the backend's distributed string "
                               "(world size 1 included); DeepSpeedEngine does not choose a backend")
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer, schedule = build_optimizer(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                              total_steps=total_steps, scheduler=scheduler,
                                              min_lr_ratio=min_lr_ratio, warmup_ratio=warmup_ratio)
        disable_shm_comm_build()
        import deepspeed

        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=schedule, config=config)
        self.zero_stage, self.bf16, self.max_norm = zero_stage, bool(bf16), max_norm
        self.loss_scale_world = loss_scale_world
        self.world_size = int(self.ds.dp_world_size)
        self._pending = False  # a backward since the last step
        self._closed = False  # the latest backward had last=True
        self.last_step_skipped = False

    @property
    def module(self) -> torch.nn.Module:
        """Call this for forwards: DeepSpeed's engine (an nn.Module running the model's forward).
        Attributes it lacks come from the model; ``unwrapped`` is the model itself."""
        return self.ds

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.ds.module

    def backward(self, loss: torch.Tensor, *, last: bool = True) -> None:
        """Accumulate the gradient of ``loss`` (a scalar from a forward through ``module``).

        last: the mini-batch's final micro-batch; ``step()`` comes next. Every rank runs the same
        number of forwards and backwards per mini-batch: ZeRO's reductions are collective.
        """
        if self._closed:
            raise RuntimeError("backward() after the mini-batch's last=True backward: call step() first")
        if self._pending and getattr(self.optimizer, "_epilogue_ran_this_backward", False):
            # DeepSpeed's forward clears this flag; still set means the forward bypassed it.
            raise RuntimeError("this loss did not come from a forward through engine.module (the DeepSpeed "
                               "engine): ZeRO would mis-accumulate gradients. Call engine.module(...), with the "
                               "whole loss computation inside the wrapped model's forward")
        self.ds.set_gradient_accumulation_boundary(bool(last))
        self.ds.backward(poison_nonfinite(loss * self.world_size if self.loss_scale_world else loss))
        self._pending, self._closed = True, bool(last)

    def step(self) -> float:
        """Clip, update, schedule, zero the gradients (collective). Returns the global pre-clip grad norm.
        A non-finite norm (or loss on any rank) skips the update and the schedule step on every rank."""
        if not self._closed:
            raise RuntimeError("step() needs a mini-batch whose final backward() had last=True")
        norm = self._plain_grad_norm() if self.zero_stage == 0 and not self.bf16 else None
        opt = self.ds.optimizer
        skip_here = norm is not None and not math.isfinite(norm)
        if norm is not None:  # ZeRO-0 fp32: DeepSpeed checks nothing; skip through its overflow flag
            opt.overflow = skip_here
        if skip_here:
            # Zeros, not None: DeepSpeed's fp32 clipping needs gradients. The torch optimizer's step
            # is shadowed for this one call (AdamW would still move weights on zero gradients).
            opt.zero_grad(set_to_none=False)
            opt.step = lambda *args, **kwargs: None
        try:
            self.ds.step()
        finally:
            if skip_here:
                del opt.step
        if norm is None:
            norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        self._pending = self._closed = False
        self.last_step_skipped = not math.isfinite(norm)
        if self.last_step_skipped and getattr(self.ds, "_step_applied", False):
            raise RuntimeError(f"DeepSpeed applied an optimizer step with a non-finite grad norm ({norm}) "
                               f"(ZeRO-{self.zero_stage}, bf16={self.bf16}): its overflow check is off "
                               "(bf16.check_grad_overflow?); the weights may now be NaN")
        return norm

    def _plain_grad_norm(self) -> float:
        # ZeRO-0 in fp32 steps the torch optimizer directly and keeps no norm. The boundary
        # backward has already all-reduced the gradients, so every rank computes the same value.
        grads = [p.grad for p in self.ds.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def steps(self) -> int:
        return int(self.ds.global_steps)

    @property
    def skipped_steps(self) -> int:
        return int(self.ds.skipped_steps)

    def _check_finite_weights(self, directory: Path) -> None:
        """NonFiniteError on every rank when any rank's weights (its partitions under ZeRO-3) hold NaN/inf."""
        bad = nonfinite_names((n, getattr(t, "ds_tensor", t)) for n, t in self._entries())
        flag = torch.tensor([float(bool(bad))], device=self.ds.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if float(flag.item()):
            raise nonfinite_weights_error(bad or ["(on another rank)"], directory)

    def _meta(self) -> dict:
        return {"world_size": self.world_size, "zero_stage": self.zero_stage, "bf16": self.bf16}

    def save(self, directory: str | Path) -> None:
        """Optimizer, schedule and step state as a DeepSpeed checkpoint in ``directory`` (collective;
        a directory every rank sees). DeepSpeed stores its copy of the weights with it. NonFiniteError on
        every rank, and nothing written, when any rank's weights hold NaN/inf."""
        directory = Path(directory)
        self._check_finite_weights(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.ds.save_checkpoint(str(directory), tag=TAG, save_latest=False)
        if self.ds.global_rank == 0:
            (directory / META_FILE).write_text(json.dumps(self._meta()))
        torch.distributed.barrier()

    def load(self, directory: str | Path, full_weights: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
        """Restore what ``save`` wrote, weights included (collective). Same stage and precision.

        Another world size (ZeRO 1-3): rank 0 converts the checkpoint once into DeepSpeed's universal
        format (deepspeed.checkpoint.ds_to_universal, written next to it as ``universal/``) and every
        rank loads its new partition of the fp32 master weights and Adam moments, with the step counts
        and the LR schedule. The universal format leaves buffers out: ``full_weights()`` (the
        checkpoint's full weights under the state-dict names) restores the module first."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no DeepSpeed engine state in {directory} ({META_FILE} is missing)")
        saved = json.loads(meta_path.read_text())
        mine = self._meta()
        if saved != mine:
            resharded = {**saved, "world_size": mine["world_size"]} == mine and self.zero_stage > 0
            if not resharded:
                raise ValueError(f"the engine state in {directory} was saved with {saved} but this engine runs "
                                 f"{mine}: ZeRO checkpoints resume only with the same stage and precision (and, "
                                 "for ZeRO-0, the same world size)")
            self._load_universal(directory, full_weights)
            return
        path, _ = self.ds.load_checkpoint(str(directory), tag=TAG)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint '{TAG}' in {directory}")

    def _load_universal(self, directory: Path, full_weights) -> None:
        target = directory / UNIVERSAL
        if self.ds.global_rank == 0 and not (target / TAG / ".complete").is_file():
            to_universal(directory / TAG, target / TAG)
        torch.distributed.barrier()
        if full_weights is not None:
            self.load_full_state_dict(full_weights())
        # what load_checkpoint reads of the config's checkpoint.load_universal, for this one load
        self.ds._config.load_universal_checkpoint = True
        try:
            path, _ = self.ds.load_checkpoint(str(target), tag=TAG)
        finally:
            self.ds._config.load_universal_checkpoint = False
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no universal checkpoint '{TAG}' in {target}")

    def _entries(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.ds.module.state_dict(keep_vars=True).items())

    # save()/load() carry the weights too (DeepSpeed checkpoints hold the module state).
    state_includes_weights = True

    def full_state_dict(self, bucket_bytes: int = 256 << 20) -> dict[str, torch.Tensor]:
        """Every state-dict entry, unpartitioned, as CPU copies in the training dtype (collective).
        Gathered a bucket at a time, each moved to the host before the next, so the device never
        holds more than one bucket of gathered weights beyond its partition."""
        return {k: v.to("cpu", copy=True) for k, v in self.iter_full_weights(bucket_bytes=bucket_bytes)}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load full weights (the keys of ``full_state_dict``) into the model and the master weights
        (collective under ZeRO-3)."""
        own = dict(self._entries())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state dict keys differ from the model's: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        if self.zero_stage == 3:
            import deepspeed

            params = [t for t in dict.fromkeys(own.values()) if hasattr(t, "ds_id")]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
                for name, tensor in own.items():
                    tensor.data.copy_(state[name])  # rank 0's copy is re-partitioned on exit
        else:
            self.ds.module.load_state_dict(state)
        if hasattr(self.optimizer, "refresh_fp32_params"):  # master weights follow (ZeRO, bf16)
            self.optimizer.refresh_fp32_params()

    def iter_full_weights(self, bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) per state-dict entry, full and detached, on the training device.

        Under ZeRO-3 parameters are all-gathered about ``bucket_bytes`` at a time and yielded as
        copies after the bucket is released: collective, every rank must iterate to the end.
        Elsewhere the tensors are the live (detached) weights.
        """
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
        entries = self._entries()
        if self.zero_stage != 3:
            for name, tensor in entries:
                yield name, tensor.detach()
            return
        import deepspeed

        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for i, (name, tensor) in enumerate(entries):
            bucket.append((name, tensor))
            size += int(getattr(tensor, "ds_numel", tensor.numel())) * tensor.element_size()
            if size >= bucket_bytes or i == len(entries) - 1:
                params = [t for t in dict.fromkeys(t for _, t in bucket) if hasattr(t, "ds_id")]
                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    copies = [(n, t.detach().clone()) for n, t in bucket]
                yield from copies
                bucket, size = [], 0
