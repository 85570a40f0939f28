"""explrobust_core.kernels: the fast ReLU / Softplus(β) / max-pooling paths equal torch's own.

References are torch's kernels (F.max_pool2d, F.softplus, F.relu) run without our mode, and torch's
numerical gradcheck; inputs are jittered so no comparison sits on a ReLU kink or a pooling tie except
where ties are the point (then only values and indices are compared).
"""

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from explrobust_core import kernels
from explrobust_core.kernels import FastKernels, max_pool2d, smooth_relu, softplus
from explrobust_core.models import build_model, softplus_view


@pytest.fixture
def small_pools(monkeypatch):
    """Route even small inputs through the channels-last path (the size cut-off is only about speed)."""
    monkeypatch.setattr(kernels, "_POOL_MIN_ELEMENTS", 0)


POOLS = [  # kernel, stride, padding, dilation, ceil_mode
    (2, None, 0, 1, False), (3, 2, 1, 1, True), ((2, 3), (1, 2), (1, 0), (2, 1), False), (2, 2, 0, 1, True),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil", POOLS)
def test_pooling_gives_torchs_values_and_indices_with_ties(small_pools, kernel, stride, padding, dilation, ceil):
    x = torch.randn(3, 5, 11, 13, dtype=torch.float64)
    x[:, :, :4] = 0.25  # whole windows of equal values: the first maximum must win, as in torch
    x[:, 1] = 0.0
    ref_out, ref_idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)
    x_req = x.clone().requires_grad_(True)
    out = max_pool2d(x_req, kernel, stride, padding, dilation, ceil)
    assert out.grad_fn is not None and "ChannelsLast" in type(out.grad_fn).__name__  # the fast path ran
    assert torch.equal(out, ref_out)
    # the gradient lands where torch's indices point
    weights = torch.randn_like(ref_out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x_req)
    expected = torch.zeros_like(x).flatten(2).scatter_add_(2, ref_idx.flatten(2), weights.flatten(2)).view_as(x)
    assert torch.equal(grad, expected)


def test_pooling_double_backward_matches_gradgradcheck(small_pools):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: max_pool2d(t, 2), (x,))


def test_pooling_keeps_torch_where_the_fast_path_does_not_apply():
    big = torch.randn(4, 16, 32, 32)
    assert "ChannelsLast" in type(max_pool2d(big.requires_grad_(True), 2).grad_fn).__name__
    small = torch.randn(1, 2, 6, 6, requires_grad=True)  # under the size cut-off
    assert "ChannelsLast" not in type(max_pool2d(small, 2).grad_fn).__name__
    out, idx = max_pool2d(big.detach(), 2, return_indices=True)  # indices asked for: torch's op
    assert torch.equal(idx, F.max_pool2d(big.detach(), 2, return_indices=True)[1])


@pytest.mark.parametrize("beta", [1.0, 10.0, 100.0])
def test_smooth_relu_equals_softplus_up_to_second_derivatives(beta):
    # values across the threshold (βx = 20) and far into both tails, jittered off exact points
    x = (torch.linspace(-4, 4, 401, dtype=torch.float64) + 1e-3 * torch.rand(401, dtype=torch.float64))
    x = x.requires_grad_(True)
    ours, ref = smooth_relu(x, beta), F.softplus(x, beta=beta)
    assert torch.equal(ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-8)
    w = torch.rand_like(x)
    (h_ours,) = torch.autograd.grad((g_ours * w).sum(), x)
    (h_ref,) = torch.autograd.grad((g_ref * w).sum(), x)
    torch.testing.assert_close(h_ours, h_ref, rtol=0, atol=1e-6 * beta)


@pytest.mark.parametrize("beta", [0.5, 1.0, 10.0, 100.0])
def test_float32_cpu_softplus_within_three_ulps_of_torchs(beta):
    # the CPU float32 forward is our own formula (kernels.softplus): across both tails and the threshold βx = 20
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20_000) * scale for scale in (1e-6, 1e-2, 0.5, 3.0, 30.0)])
    x = torch.cat([x, torch.tensor([0.0, -0.0, 20 / beta, 20 / beta * (1 + 1e-6), 20 / beta * (1 - 1e-6),
                                    float("inf"), -float("inf"), 88.0, -88.0])])
    ours, ref = softplus(x, beta), F.softplus(x, beta=beta)
    assert ours.dtype == torch.float32 and not torch.equal(ours, ref)  # not torch's own kernel
    finite = torch.isfinite(ref)
    assert torch.equal(ours[~finite], ref[~finite])
    # in float64, so that the unit in the last place of a tiny result does not round to 0 (measured: ≤ 2.6)
    ulp = 2.0 ** -23 * ref.double().abs().clamp_min(torch.finfo(torch.float32).tiny)
    assert ((ours.double() - ref.double()).abs()[finite] <= 3 * ulp[finite]).all()
    above = x * beta > 20
    assert torch.equal(ours[above], x[above])  # the identity above the threshold, as torch's
    assert torch.isnan(softplus(torch.tensor([float("nan")]), beta)).all()


@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_smooth_relu_third_derivative_equals_softplus(beta):
    # the landscape's curvature of an explanation change is a Hessian–vector product of a gradient: third order
    torch.manual_seed(0)
    x = torch.randn(60, dtype=torch.float64).requires_grad_(True)
    w, v = torch.randn(60, dtype=torch.float64), torch.randn(60, dtype=torch.float64)

    def third(f):
        (g,) = torch.autograd.grad((f(x) * w).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x, create_graph=True)
        return torch.autograd.grad((h * v).sum(), x)[0]

    ref = third(lambda t: F.softplus(t, beta=beta))
    torch.testing.assert_close(third(lambda t: smooth_relu(t, beta)), ref, rtol=1e-7, atol=1e-9 * beta ** 3)
    first = lambda t: torch.autograd.grad(smooth_relu(t, 3.0).sum(), t, create_graph=True)[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(first, (x[:20].detach().clone().requires_grad_(True),))


def test_smooth_relu_gradgradcheck():
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: smooth_relu(t, 3.0), (x,))
    assert torch.autograd.gradgradcheck(lambda t: smooth_relu(t, 3.0), (x,))


class _TorchSoftplus(TorchFunctionMode):
    """The reference view: every ReLU as torch's own F.softplus, torch's pooling."""

    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in kernels.RELU_FUNCS:
            return F.softplus(args[0], beta=self.beta)
        return func(*args, **(kwargs or {}))


def _map_loss_derivatives(forward, model, x, y):
    """Input gradient g of the true-class logit, then d/dx and d/dθ of a weighted |g| (double backprop)."""
    x = x.clone().requires_grad_(True)
    logits = forward(x)
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x, create_graph=True)
    weights = torch.linspace(0, 1, g[0].numel(), dtype=g.dtype).view_as(g[0])
    objective = (g.abs() * weights).sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(objective, [x, *params], allow_unused=True)
    # a parameter the objective does not reach (a bias, for a ReLU net) gets None here, zeros from torch
    return [logits, g] + [torch.zeros_like(p) if d is None else d for d, p in zip(grads, [x, *params])]


@pytest.mark.parametrize("view", [False, True])
def test_convnet_logits_gradients_and_double_backprop_match_torch(view):
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 28, 28), num_classes=10, mean=[0.13], std=[0.31]).double().eval()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    x[:, :, :5] = 0.0  # a blank band, as MNIST's borders: ties inside pooling windows
    x = x + 1e-6 * torch.rand_like(x)  # …broken by jitter below the tolerance, so no kink is compared
    y = torch.randint(0, 10, (8,))
    if view:
        smooth = softplus_view(model, 10.0)
        ours = _map_loss_derivatives(smooth, model, x, y)
        with _TorchSoftplus(10.0):
            ref = _map_loss_derivatives(model, model, x, y)
    else:
        with FastKernels():
            ours = _map_loss_derivatives(model, model, x, y)
        ref = _map_loss_derivatives(model, model, x, y)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    # not trivially zero: the weights' gradient always, the input's on the smooth view (a ReLU net's is 0)
    assert ref[3].abs().max() > 0 and (not view or ref[2].abs().max() > 0)


def test_in_place_relu_is_left_to_torch():
    x = torch.randn(5)
    with FastKernels():
        y = F.relu(x, inplace=True)
    assert y is x and (x >= 0).all()


@pytest.mark.parametrize("stride,padding,dilation,groups,size", [(1, 1, 1, 1, 9), (2, 1, 1, 1, 9), (2, 0, 2, 2, 10),
                                                                  (3, 2, 1, 1, 11)])
def test_input_only_convolution_matches_torch_to_second_order(stride, padding, dilation, groups, size):
    torch.manual_seed(0)
    x = torch.randn(2, 4, size, size + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def derivatives(mode):
        with mode:
            out = F.conv2d(x, w, b, stride, padding, dilation, groups)
            (g,) = torch.autograd.grad((out.tanh() * out).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g.sin() * g).sum(), x)
        return out, g, h

    for ours, ref in zip(derivatives(FastKernels(weight_gradients=False)), derivatives(FastKernels())):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    with FastKernels(weight_gradients=False):
        F.conv2d(x, w, b, stride, padding, dilation, groups).sum().backward()
    assert w.grad is None and b.grad is None and x.grad is not None  # the weights stay constants


@pytest.mark.parametrize("stride,padding,dilation,size", [(1, 1, 1, 9), (2, 1, 1, 9), (2, 0, 2, 10), (3, 2, 1, 11)])
def test_first_layer_input_gradient_by_fold_matches_torch_to_second_order(stride, padding, dilation, size):
    # maps and an attack's gradient step take fold(Wᵀ·g) for layers of one input channel, to second order
    torch.manual_seed(0)
    x = torch.randn(2, 1, size, size + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64)

    def derivatives(mode):
        with mode:
            out = F.conv2d(x, w, None, stride, padding, dilation)
            (g,) = torch.autograd.grad((out.tanh() * out).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g.sin() * g).sum(), x)
        return out, g, h

    ours = derivatives(FastKernels(weight_gradients=False))
    assert "ByFold" in type(ours[1].grad_fn).__name__  # the fold path ran
    for a, b in zip(ours, derivatives(contextlib.nullcontext())):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_one_channel_maps_are_the_same_bits_in_any_batch(one_torch_thread):
    # the fold path serves one-channel images at every batch size (small ones get the mode too, and large ones
    # are folded in parts), so it never makes an image's map depend on its batch. (With torch's own kernels,
    # batches of 1-3 images differ from larger ones by ~1e-9, and on two threads more sizes do.)
    from explrobust_core.explain import attribute

    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 28, 28), num_classes=10, mean=(0.13,), std=(0.3,)).eval()
    x = torch.rand(40, 1, 28, 28)
    whole = attribute(model, x, "gradient", target=torch.arange(40) % 10)
    for start, stop in ((0, 4), (4, 9), (9, 40)):  # 5 images: below the size that gets a mode for speed alone
        part = attribute(model, x[start:stop], "gradient", target=torch.arange(start, stop) % 10)
        assert torch.equal(part, whole[start:stop]), (start, stop)
    with mock.patch.object(kernels, "_FOLD_MAX_COLUMNS", 9 * 28 * 28 * 3):  # folded three images at a time
        assert torch.equal(attribute(model, x, "gradient", target=torch.arange(40) % 10), whole)


def test_a_maps_pass_folds_one_channel_convolutions_and_leaves_the_others_to_torch():
    # fold_one_channel (an explainer's first-order pass): a grey image's first layer takes the fold path with
    # constant weights; a layer of several input channels stays torch's convolution, weights' gradients and all
    x1 = torch.randn(2, 1, 8, 8, requires_grad=True)
    x3 = torch.randn(2, 3, 8, 8, requires_grad=True)
    w1, w3 = torch.randn(4, 1, 3, 3, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    with FastKernels(fold_one_channel=True):
        out1, out3 = F.conv2d(x1, w1, padding=1), F.conv2d(x3, w3, padding=1)
    assert "InputOnly" in type(out1.grad_fn).__name__ and "InputOnly" not in type(out3.grad_fn).__name__
    (out1.sum() + out3.sum()).backward()
    assert w1.grad is None and w3.grad is not None and x1.grad is not None
    torch.testing.assert_close(x1.grad, torch.autograd.grad(F.conv2d(x1, w1, padding=1).sum(), x1)[0])


def test_fold_input_gradient_is_the_same_for_any_batch_size():
    torch.manual_seed(0)
    w, g = torch.randn(32, 1, 3, 3), torch.randn(8, 32, 28, 28)
    whole = kernels._input_gradient_by_fold(g, w, torch.Size([8, 1, 28, 28]), (1, 1), (1, 1), (1, 1))
    for threads in (1, 2):  # the same bits image by image, on one thread and on two
        with _threads(threads):
            for start, stop in ((0, 1), (3, 4), (2, 7)):
                part = kernels._input_gradient_by_fold(g[start:stop], w, torch.Size([stop - start, 1, 28, 28]),
                                                       (1, 1), (1, 1), (1, 1))
                assert torch.equal(part, whole[start:stop])
    assert not kernels._fold_applies(torch.zeros(2, 3, 8, 8), torch.zeros(4, 3, 3, 3), 1)  # RGB: torch's kernel


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_attack_mode_leaves_the_parameters_alone():
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 28, 28), num_classes=10, mean=[0.13], std=[0.31]).double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) + 1e-3
    y = torch.randint(0, 10, (4,))
    smooth = softplus_view(model, 10.0)

    def input_derivatives(mode):
        x_req = x.clone().requires_grad_(True)
        with mode:
            (g,) = torch.autograd.grad(smooth(x_req).gather(1, y[:, None]).sum(), x_req, create_graph=True)
        objective = (g.abs() * torch.linspace(0, 1, 784, dtype=g.dtype).view(1, 1, 28, 28)).sum()
        objective.backward()
        return g, x_req.grad

    ours = input_derivatives(FastKernels(weight_gradients=False))
    assert all(p.grad is None for p in model.parameters())
    ref = input_derivatives(FastKernels())
    assert any(p.grad is not None for p in model.parameters())  # the reference does reach them
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_nested_contexts_push_a_mode_only_when_they_add_something():
    from explrobust_core.kernels import fast_kernels

    w = torch.randn(3, 3, requires_grad=True)
    with fast_kernels(weight_gradients=False) as outer:
        assert isinstance(outer, FastKernels)
        with fast_kernels() as inner:  # asks for nothing more: no second mode
            assert not isinstance(inner, FastKernels)
            assert not F.linear(torch.randn(2, 3), w).requires_grad  # the weights are still constants
    with fast_kernels() as outer:
        with fast_kernels(weight_gradients=False) as inner:  # stricter: pushed
            assert isinstance(inner, FastKernels) and not inner.weight_gradients
        assert F.linear(torch.randn(2, 3), w).requires_grad  # back to the outer mode's rules


def test_small_first_order_passes_get_no_mode():
    from explrobust_core.kernels import fast_kernels

    with fast_kernels(first_order_input=torch.zeros(2, 1, 8, 8)) as small:  # bitwise the same either way
        assert not isinstance(small, FastKernels)
    with fast_kernels(first_order_input=torch.zeros(64, 1, 28, 28)) as large:
        assert isinstance(large, FastKernels)
    with fast_kernels(weight_gradients=False, first_order_input=torch.zeros(2, 3, 8, 8)) as small_rgb:
        assert not isinstance(small_rgb, FastKernels)
    # one-channel images with constant weights: the first layer's fold changes the bits, so every size gets it
    with fast_kernels(weight_gradients=False, first_order_input=torch.zeros(1, 1, 8, 8)) as one:
        assert isinstance(one, FastKernels)
    with fast_kernels(first_order_input=torch.zeros(1, 1, 8, 8), fold_one_channel=True) as a_map:
        assert isinstance(a_map, FastKernels)
        with fast_kernels(first_order_input=torch.zeros(64, 1, 28, 28)) as inner:  # the outer one does as much
            assert not isinstance(inner, FastKernels)
    with FastKernels(), fast_kernels(first_order_input=torch.zeros(64, 1, 28, 28), fold_one_channel=True) as more:
        assert isinstance(more, FastKernels)  # the outer mode does not fold


def test_freed_memory_is_kept_for_reuse_on_glibc():
    import platform

    from explrobust_core.cpu_memory import reuse_freed_memory

    took = reuse_freed_memory()
    assert reuse_freed_memory() is took  # idempotent
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert took
