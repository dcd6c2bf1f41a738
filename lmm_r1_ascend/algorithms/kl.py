"""Per-token KL estimators (k1, k2, k3) and KL coefficient controllers.

With ``delta = log_probs - ref_log_probs`` (log pi(a|s) - log pi_ref(a|s) of the sampled
token), the estimators of KL(pi || pi_ref) are (Schulman, "Approximating KL divergence"):

* ``k1 = delta``                        unbiased, can be negative, high variance
* ``k2 = delta**2 / 2``                 biased, non-negative, low variance
* ``k3 = exp(-delta) - 1 + delta``      unbiased, non-negative, low variance

All functions are elementwise: any shape works as long as the inputs match. Masked
positions (``mask`` False) are set to 0 so that padding never leaks into sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmm_r1_ascend.algorithms.registry import Registry

KLEstimator = Callable[[torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator", "kl_estimator")


@KL_ESTIMATORS.register("k1")
def _k1(delta: torch.Tensor) -> torch.Tensor:
    return delta


@KL_ESTIMATORS.register("k2")
def _k2(delta: torch.Tensor) -> torch.Tensor:
    return 0.5 * delta.square()


@KL_ESTIMATORS.register("k3")
def _k3(delta: torch.Tensor) -> torch.Tensor:
    # exp(-d) - 1 + d cancels for small |d|. There, use its Taylor series up to d^6; the
    # next term, d^7/5040, is a relative 5e-9 of the value at |d| = 0.1 (below float32's
    # precision) and 4e-19 at |d| = 1e-3 (below float64's, where cancellation costs less).
    direct = torch.expm1(-delta) + delta
    d = delta
    series = d.square() * (0.5 + d * (-1 / 6 + d * (1 / 24 + d * (-1 / 120 + d / 720))))
    switch = 1e-3 if delta.dtype == torch.float64 else 0.1
    return torch.where(delta.abs() < switch, series, direct)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision floats become float32; float32/float64 are left as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def compute_kl(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    estimator: str = "k1",
    *,
    mask: torch.Tensor | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Per-token KL estimate of pi (``log_probs``) against pi_ref (``ref_log_probs``).

    Args:
        log_probs, ref_log_probs: same shape, e.g. (B, L) padded or (T,) packed; any
            float dtype (half precision is computed in float32).
        estimator: "k1", "k2" or "k3".
        mask: optional bool tensor of the same shape; False positions give 0.
        clamp: if set, the estimate is clamped to [-clamp, clamp] (guards k3's exp
            against a reference that has drifted far away).

    Returns:
        A tensor of the inputs' shape (float32 at least), differentiable in both inputs.
    """
    fn = KL_ESTIMATORS.get(estimator)
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(
            f"log_probs {tuple(log_probs.shape)} and ref_log_probs {tuple(ref_log_probs.shape)} "
            "must have the same shape (one value per response token)"
        )
    if clamp is not None and not clamp > 0:
        raise ValueError(f"kl clamp must be positive or None, got {clamp}")
    delta = upcast(log_probs) - upcast(ref_log_probs)
    if mask is not None:
        if mask.shape != delta.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match log_probs {tuple(delta.shape)}")
        # Zero delta first so masked garbage (e.g. -inf padding) cannot make NaN through exp.
        delta = torch.where(mask, delta, torch.zeros_like(delta))
    kl = fn(delta)
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    if mask is not None:
        kl = torch.where(mask, kl, torch.zeros_like(kl))
    return kl


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        if not (kl_coef >= 0 and math.isfinite(kl_coef)):
            raise ValueError(f"init_kl_coef must be a finite number >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Proportional KL controller (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    After a rollout with observed mean KL ``current_kl`` over ``n_steps`` samples:
    ``e = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``value <- value * (1 + e * n_steps / horizon)``. The coefficient grows when the
    policy drifts beyond the target and shrinks when it stays below.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if not (init_kl_coef >= 0 and math.isfinite(init_kl_coef)):
            raise ValueError(f"init_kl_coef must be a finite number >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"kl_target must be > 0 for the adaptive KL controller, got {target}")
        if not horizon > 0:
            raise ValueError(f"kl_horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        if not math.isfinite(current_kl):
            raise ValueError(f"current KL must be finite to update the KL coefficient, got {current_kl}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def make_kl_controller(
    init_kl_coef: float, kl_target: float | None = None, kl_horizon: float = 10000
) -> FixedKLController | AdaptiveKLController:
    """An adaptive controller when ``kl_target`` is set, else a fixed one."""
    if kl_target is None:
        return FixedKLController(init_kl_coef)
    return AdaptiveKLController(init_kl_coef, kl_target, kl_horizon)
