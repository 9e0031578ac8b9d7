"""Cross-entropy over a tied vocabulary projection, computed a chunk of rows at a time.

A causal LM decodes every position: (tokens x vocabulary) logits, their log-softmax and its
backward are most of a small model's step, and on a CPU most of that is memory traffic.
Here each chunk's logits are made, turned into the loss and into their gradient in place,
and dropped, so the full logits never exist and the softmax is read and written a few times
in cache instead of many times in memory. The gradients are computed in the forward pass
(the loss is a scalar at the end of the graph) and scaled by the incoming gradient after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _chunked(h, weight, bias, targets, chunk: int, want_grad: bool):
    """The mean loss and, if wanted, its gradients w.r.t. h, weight and bias."""
    keep = targets != IGNORE
    n_valid = keep.sum().clamp(min=1).to(torch.float32)
    grad_h = torch.empty_like(h) if want_grad else None
    grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_grad and bias is not None else None
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, len(h), chunk):
        hc, tc, kc = h[start : start + chunk], targets[start : start + chunk], keep[start : start + chunk]
        logits = F.linear(hc, weight, bias).float()  # under autocast the matmul runs in bf16
        rows, safe_t = torch.arange(len(tc), device=h.device), tc.clamp(min=0)
        picked = logits[rows, safe_t]
        top = logits.amax(1, keepdim=True)
        probs = logits.sub_(top).exp_()  # in place: the logits are not needed any more
        norm = probs.sum(1, keepdim=True)
        total += ((top.squeeze(1) + norm.squeeze(1).log() - picked) * kc).sum()
        if want_grad:
            # d loss / d logits = (softmax - one_hot(target)) / n_valid on kept rows, 0 elsewhere.
            probs.div_(norm)
            probs[rows, safe_t] -= 1.0
            probs.mul_((kc / n_valid).unsqueeze(1))
            grad_h[start : start + chunk] = (probs @ weight).to(h.dtype)
            grad_w += (probs.T @ hc).float()
            if grad_b is not None:
                grad_b += probs.sum(0)
    return total / n_valid, (grad_h, grad_w, grad_b)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk):
        loss, (grad_h, grad_w, grad_b) = _chunked(h, weight, bias, targets, chunk, want_grad=True)
        ctx.has_bias = grad_b is not None
        ctx.save_for_backward(grad_h, grad_w, *([grad_b] if ctx.has_bias else []))
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, *rest = ctx.saved_tensors
        grad_b = rest[0] * grad_out if ctx.has_bias else None
        return grad_h * grad_out, (grad_w * grad_out).to(ctx.saved_tensors[1].dtype), grad_b, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T + bias` against `targets` (-100 ignored), for
    h (..., d) and targets (...); equal to F.cross_entropy on the full logits."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
    if not needs_grad:
        return _chunked(h, weight, bias, targets, chunk, want_grad=False)[0]
    return _LinearCrossEntropy.apply(h, weight, bias, targets, chunk)
