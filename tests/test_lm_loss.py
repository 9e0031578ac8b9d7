import torch
import torch.nn.functional as F

from models.lm_loss import linear_cross_entropy


def _inputs(bias: bool):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, requires_grad=True)
    w = (torch.randn(50, 8, generator=g) * 0.3).requires_grad_()
    b = torch.randn(50, generator=g).requires_grad_() if bias else None
    t = torch.randint(0, 50, (37,), generator=g)
    t[::5] = -100
    return h, w, b, t


def test_chunked_loss_and_gradients_equal_the_full_cross_entropy():
    for bias in (True, False):
        h, w, b, t = _inputs(bias)
        expected = F.cross_entropy(F.linear(h, w, b), t)
        grads = torch.autograd.grad(2 * expected, [x for x in (h, w, b) if x is not None])
        got = linear_cross_entropy(h, w, b, t, chunk=8)  # several chunks and a ragged last one
        torch.testing.assert_close(got, expected)
        for a, e in zip(torch.autograd.grad(2 * got, [x for x in (h, w, b) if x is not None]), grads, strict=True):
            torch.testing.assert_close(a, e)


def test_no_gradient_path_and_all_ignored_targets():
    h, w, b, t = _inputs(True)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, b, t), F.cross_entropy(F.linear(h, w, b), t))
    none = linear_cross_entropy(h, w, b, torch.full_like(t, -100))
    assert none.item() == 0.0
    none.backward()
    assert h.grad.abs().sum() == 0
