"""Token log-probs and entropy from hidden states and the output head, in chunks of tokens.

The naive way (`token_logprobs_naive`) materialises fp32 logits of shape (T, V) and,
under autograd, several more (T, V) buffers for the backward: at T = 4096 tokens and
Qwen's V = 151,936 that is ~2.5 GB per buffer. `token_logprobs` walks the tokens in
chunks of `chunk_size`, keeps only per-token scalars (log-sum-exp, expected logit) for
the backward, and recomputes each chunk's logits there, so peak memory is
O(chunk_size x V) in forward and backward alike, at the price of one extra matmul.

Numerics follow RECIPE.md: the head matmul runs in the input dtype, its result is
upcast to fp32 and divided by the temperature; softmax, log-probs and entropy are fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    chunk_size: int | None = None,
) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not hidden.is_floating_point() or hidden.dim() < 1:
        raise TypeError(f"hidden must be a floating tensor of shape (..., H), got {hidden.dtype} {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype; "
            "cast hidden to the output head's dtype"
        )
    if labels.dtype not in (torch.int64, torch.int32) or tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels must be an int64 tensor shaped like hidden without its last dim "
            f"{tuple(hidden.shape[:-1])}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if bias is not None and (
        not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],) or bias.dtype != weight.dtype
    ):
        got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must be a {weight.dtype} tensor of shape (V,) = ({weight.shape[0]},), got {got}")
    devices = {t.device for t in (hidden, weight, labels, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"hidden ({hidden.device}), weight ({weight.device}), labels ({labels.device}) and bias "
            "must be on one device"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    vocab = weight.shape[0]
    # One host sync; a bad label would otherwise index out of bounds inside a kernel.
    if labels.numel() and bool(((labels < 0) | (labels >= vocab)).any()):
        bad = labels[(labels < 0) | (labels >= vocab)][0].item()
        raise ValueError(f"labels must lie in [0, V) = [0, {vocab}), found {bad} (mask ignored positions before calling)")


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 when the input is fp64 (so float64 gradchecks are meaningful)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """(c, H) input dtype -> (c, V) fp32 (fp64 for fp64 input) logits / temperature.

    The matmul runs in the input dtype; only its result is upcast. Autocast is off so
    that forward and backward recompute the very same logits whatever the caller's mode.
    """
    with torch.autocast(h.device.type, enabled=False):
        logits = F.linear(h, weight, bias).to(_logit_dtype(h.dtype))
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


class _ChunkedLogprobs(torch.autograd.Function):
    """Forward returns (logprobs (T,), entropy (T,) or empty); backward recomputes logits per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk_size, with_entropy):
        n_tok = hidden.shape[0]
        logp = torch.empty(n_tok, dtype=_logit_dtype(hidden.dtype), device=hidden.device)
        lse = torch.empty_like(logp)
        # Entropy = lse - E_p[z]; E_p[z] is also what the entropy backward needs.
        mean_z = torch.empty_like(logp) if with_entropy else None
        for s in range(0, n_tok, chunk_size):
            e = min(s + chunk_size, n_tok)
            z = _chunk_logits(hidden[s:e], weight, bias, temperature)
            lse[s:e] = torch.logsumexp(z, dim=-1)
            logp[s:e] = z.gather(-1, labels[s:e, None]).squeeze(-1) - lse[s:e]
            if with_entropy:
                p = torch.softmax(z, dim=-1)
                mean_z[s:e] = torch.bmm(p[:, None, :], z[:, :, None]).view(-1)  # no (c, V) temporary
                del p
            del z  # before the next chunk's buffers exist
        entropy = lse - mean_z if with_entropy else logp.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, mean_z)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(*(() if with_entropy else (entropy,)))
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels, lse, mean_z = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if mean_z is None or (grad_entropy is not None and grad_entropy.numel() == 0):
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None, None
        n_tok = hidden.shape[0]
        grad_h = hidden.new_empty(hidden.shape) if need_h else None  # contiguous rows for out=
        grad_w = torch.zeros_like(weight) if need_w else None
        acc = _logit_dtype(weight.dtype)
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for s in range(0, n_tok, chunk_size):
            e = min(s + chunk_size, n_tok)
            z = _chunk_logits(hidden[s:e], weight, bias, temperature)
            # d logp_i / dz = onehot(label) - p ;  d H / dz = -p * (z - E_p[z]) ;  dz / d raw = 1/T.
            # So dL/d raw = (-p * (g_lp + g_ent * (z - E_p[z])) + g_lp * onehot(label)) / T,
            # built in place with the 1/T folded into the per-token factors: one (c, V) fp32
            # buffer without the entropy term, two with it.
            g_lp = grad_logp[s:e, None] / temperature if grad_logp is not None else None
            if grad_entropy is not None:
                p = (z - lse[s:e, None]).exp_()
                z.sub_(mean_z[s:e, None]).mul_(grad_entropy[s:e, None] / -temperature)
                if g_lp is not None:
                    z.sub_(g_lp)
                p.mul_(z)
            else:
                p = z.sub_(lse[s:e, None]).exp_().mul_(-g_lp)
            del z
            if g_lp is not None:
                p.scatter_add_(-1, labels[s:e, None], g_lp)
            g_raw = p.to(weight.dtype)  # gradient of the upcast is a downcast
            del p
            if need_h:
                torch.matmul(g_raw, weight, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(g_raw.t(), hidden[s:e])
            if need_b:
                grad_b.add_(g_raw.sum(0, dtype=acc))
            del g_raw  # before the next chunk's buffers exist
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (and entropy) of `labels` under softmax(fp32(hidden @ weight.T + bias) / temperature).

    Args:
        hidden: (T, H) or (..., H), any float dtype; the last hidden states.
        weight: (V, H), same dtype and device as hidden; the output head.
        labels: (T,) or (...,) int64 in [0, V); the token whose log-prob is wanted at each
            position (for a causal LM, the next token).
        temperature: > 0; logits are divided by it in fp32.
        bias: optional (V,) head bias.
        chunk_size: tokens per chunk. Extra memory beyond inputs and gradients is about
            one (chunk_size, V) fp32 buffer per step without entropy, two with it (plus a
            (chunk_size, V) buffer in the input dtype when that is not fp32).
        return_entropy: also return the entropy of each position's distribution.

    Returns:
        logprobs (...,) float32, and with return_entropy also entropy (...,) float32
        (float64 for float64 inputs).
        Both are differentiable w.r.t. hidden, weight and bias; the backward recomputes
        each chunk's logits. The weight gradient is accumulated in weight's dtype.
    """
    _check_inputs(hidden, weight, labels, bias, temperature, chunk_size)
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1).long()
    logp, entropy = _ChunkedLogprobs.apply(h2, weight, bias, lab, float(temperature), chunk_size, return_entropy)
    if return_entropy:
        return logp.reshape(lead), entropy.reshape(lead)
    return logp.reshape(lead)


def token_logprobs_naive(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `token_logprobs`, computed the obvious way over full (..., V) fp32 logits.

    The reference for tests and the baseline for benchmarks; plain autograd does the backward.
    """
    _check_inputs(hidden, weight, labels, bias, temperature)
    logits = F.linear(hidden, weight, bias).to(_logit_dtype(hidden.dtype)) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy
