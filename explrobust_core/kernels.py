"""Faster autograd paths for ReLU, Softplus(β), 2-D max pooling and convolutions, equal to torch's up to rounding.

The explanation attacks and SEP differentiate *through* an input gradient (double backprop). Profiles
of those steps on the CPU (bench/profile_attack.py, bench/REPORT.md) showed four avoidable costs:

* **max pooling on the CPU**: torch's NCHW CPU kernel is about ten times slower than its channels-last
  kernel (one thread, 64×32×28×28: ~8 ms against ~0.7 ms). :class:`_ChannelsLastMaxPool2d` pools a
  channels-last copy (same values, same indices — the first maximum of each window) and hands the
  result back in the caller's layout; its backward is torch's own ``max_pool2d_with_indices_backward``.
* **zeros sent through the forward graph**: torch defines the derivative of ReLU's and max pooling's
  backward with respect to the forward tensor as a tensor of zeros (ReLU'' = 0), which a double
  backward then propagates through the whole forward graph — every convolution's backward run again
  on zeros. Here those backwards read the forward tensor *detached*, so nothing flows there.
* **Softplus(β)'s double backward**: torch's recomputes σ(βx) and several full-size temporaries;
  :class:`_SmoothReLU` evaluates σ(βx) once and its second derivative β·σ(1 − σ) in one fused op.
* **a weight gradient nobody asked for**: torch's double backward of a convolution also convolves for the
  weights; attacks, which differentiate the input only, use :class:`_InputOnlyConv2d` (``weight_gradients=False``).
* **a one-channel first layer's input gradient**: torch's CPU kernel is about twice as slow as a 1×1 convolution
  and a col2im (:class:`_InputGradientByFold`), which every map of grey images takes (``fold_one_channel``: the
  explainers' first-order maps; ``weight_gradients=False``: the attacks, to second order); those maps are torch's
  up to rounding (a few units in the last place), the same bits in any batch.

:class:`FastKernels` applies them to any model through ``__torch_function__`` (so it also catches
``F.relu`` called directly); :class:`~explrobust_core.models.SoftplusView` uses the smooth ReLU and the pooling.
The channels-last pooling is used only for large CPU tensors and the fold only on the CPU (on a GPU torch's
kernels are kept); the others hold on any device. tests/test_kernels.py checks them against torch's kernels:
identical pooled values and indices, identical ReLU-network gradients, Softplus and convolution derivatives to rounding
(Softplus' slope σ(βx) differs from torch's by at most e⁻²⁰ ≈ 2e-9, where βx > 20 and torch takes exactly 1;
in float32 both round to 1 there).
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

RELU_FUNCS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})
# the out-of-place ones: an in-place ReLU is left to torch (the caller may read the tensor it overwrote)
_OUT_OF_PLACE_RELU = frozenset({F.relu, torch.relu, torch.Tensor.relu})


class _ReLU(torch.autograd.Function):
    """max(x, 0) whose backward reads the output detached: ReLU'' = 0, so a double backward stops here."""

    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        # torch's own rule (gradient where the output is positive); differentiable in ``grad`` only
        return torch.ops.aten.threshold_backward(grad, y.detach(), 0)


def relu(x: torch.Tensor) -> torch.Tensor:
    return _ReLU.apply(x)


class _SigmoidGate(torch.autograd.Function):
    """``grad · s`` with s = σ(βx): Softplus(β)'s first derivative applied to ``grad``, differentiable in
    ``grad`` and in ``x`` (d s / dx = β·s·(1 − s)). Its own backward takes a fused kernel when no graph is
    being built (an attack's or SEP's double backward) and differentiable ops when one is (a Hessian–vector
    product of an explanation change, the landscape's curvature: third derivatives)."""

    @staticmethod
    def forward(ctx, grad, x, s, beta):
        ctx.save_for_backward(grad, x, s)
        ctx.beta = beta
        return grad * s

    @staticmethod
    def backward(ctx, gg):
        grad, x, s = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: every factor attached, so higher derivatives are right
            s = torch.sigmoid(x * ctx.beta)
            d_grad = gg * s if ctx.needs_input_grad[0] else None
            d_x = gg * grad * (ctx.beta * s * (1 - s)) if ctx.needs_input_grad[1] else None
            return d_grad, d_x, None, None
        d_grad = gg * s if ctx.needs_input_grad[0] else None
        d_x = torch.ops.aten.sigmoid_backward(gg * grad, s) * ctx.beta if ctx.needs_input_grad[1] else None
        return d_grad, d_x, None, None


_LN2 = math.log(2.0)


def softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """``F.softplus(x, beta)`` (threshold 20), computed on the CPU in float32 as ``relu(x) + log1p(e^{−β|x|})/β``.

    Why: torch's CPU softplus, log and log1p are slow in float32 (torch 2.14, AVX-512 build, one thread,
    64×32×28×28: softplus 19 ms, log1p 18 ms, log 9 ms, against 1.4 ms for log2 and 1.1 ms for exp), and the
    Softplus view's forward was a quarter of an explanation-attack step; this takes 6 ms.

    log1p(u) for u = e^{−β|x|} ∈ (0, 1] is taken as ln(w) − ((w − 1) − u)/w with w = 1 + u (the rounding of
    1 + u corrected to first order; w = 1 gives u), ln from log2. The result is within 3 units in the last place
    of torch's (tests/test_kernels.py; measured ≤ 2.6, where torch's own is up to 33 from the exact value for
    β = 10, from rounding βx). Above the threshold (βx > 20) the added term is below e⁻²⁰·x/20, under half a
    float32 ulp of x, so the sum is x as torch's. Other dtypes and devices (a GPU's softplus is one fused
    kernel) use torch's. A forward only (it works in place on its temporaries): :func:`smooth_relu` is the
    differentiable Softplus.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.softplus(x, beta=beta)
    u = (x * beta).abs_().neg_().exp_()
    w = u + 1
    log1p_u = torch.log2(w).mul_(_LN2).sub_((w - 1).sub_(u).div_(w))
    return x.clamp_min(0).add_(log1p_u.div_(beta))  # clamp_min: no ReLU a FastKernels mode would reroute


class _SmoothReLU(torch.autograd.Function):
    """Softplus(β) (torch's forward, threshold 20, by :func:`softplus`) with the cheaper first and second
    derivatives above.

    Above the threshold torch's softplus is the identity; σ(βx) there is 1 − O(e⁻²⁰), which rounds to 1
    in float32, so the derivatives agree there too (to 2e-9 in float64)."""

    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(x)
        ctx.beta = beta
        return softplus(x, beta)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x.detach() * ctx.beta)
        return _SigmoidGate.apply(grad, x, s, ctx.beta), None


def smooth_relu(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Softplus(β)(x) = log(1 + exp(βx)) / β with a cheap double backward."""
    if x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type):
        return F.softplus(x, beta=beta)  # autocast runs torch's softplus in float32; ours would stay in half
    return _SmoothReLU.apply(x, float(beta))


def _channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous(memory_format=torch.channels_last)``, the same tensor, by a copy of the permuted view: on
    the CPU (torch 2.14, one thread, 256×32×28×28) 4 ms against 11 ms."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _contiguous_copy(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()`` of a channels-last tensor by ``copy_`` into a fresh one (about 1.7× faster on the CPU)."""
    if x.is_contiguous():
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


class _ChannelsLastMaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, indices = torch.ops.aten.max_pool2d_with_indices(_channels_last_copy(x), kernel_size, stride, padding,
                                                              dilation, ceil_mode)
        indices = _contiguous_copy(indices)
        ctx.save_for_backward(x, indices)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out  # torch's own kernel keeps a channels-last input's layout too
        return _contiguous_copy(out)

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        # differentiable in ``grad`` (a gather by the indices); the input only gives the shape
        return (torch.ops.aten.max_pool2d_with_indices_backward(grad, x.detach(), *ctx.args, indices),
                None, None, None, None, None)


# below this many input elements (a few small images) the two layout copies and the Python-level autograd
# node cost more than torch's NCHW kernel saves; the result is the same either way
_POOL_MIN_ELEMENTS = 1 << 16


def _pool_args(args: tuple, kwargs: dict) -> tuple[Any, ...] | None:
    """``F.max_pool2d``'s arguments as lists for the aten op, or None when they ask for something else
    (returned indices) or when the input is not a 4-D CPU floating-point batch."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = dict(zip(names, args), **kwargs)
    x = bound["input"]
    if (bound.get("return_indices") or not isinstance(x, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu"
            or not x.is_floating_point() or x.numel() < _POOL_MIN_ELEMENTS):
        return None
    kernel = list(_pair(bound["kernel_size"]))
    stride = bound.get("stride")
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else list(_pair(stride))
    return (x, kernel, stride, list(_pair(bound.get("padding", 0))), list(_pair(bound.get("dilation", 1))),
            bool(bound.get("ceil_mode", False)))


def max_pool2d(*args, **kwargs) -> torch.Tensor:
    """``F.max_pool2d`` through the channels-last kernel where that applies (see :func:`_pool_args`)."""
    pool = _pool_args(args, kwargs)
    if pool is None:
        return F.max_pool2d(*args, **kwargs)
    return _ChannelsLastMaxPool2d.apply(*pool)


class _InputOnlyConv2d(torch.autograd.Function):
    """``F.conv2d`` with constant weights whose backward is a transposed convolution of the gradient.

    Differentiating torch's convolution backward a second time (``_convolution_double_backward``) also
    convolves for the *weights'* gradient even when nothing asks for it — one wasted convolution per layer
    and double backward (profiled on torch 2.14). Here the weights never carry a graph, so an explanation
    attack's double backward convolves only what reaches the input."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, by_fold):
        ctx.input_shape = x.shape
        ctx.save_for_backward(weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.by_fold = by_fold
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        if ctx.by_fold:  # a first layer in a pass differentiated twice: differentiable, its backward a convolution
            grad_input = _input_gradient_by_fold(grad, weight, ctx.input_shape, stride, padding, dilation)
        elif grad.requires_grad:  # a double backward follows: a transposed convolution, whose own backward is lean
            kernel = weight.shape[-2:]
            # the rows/columns the forward's stride skipped at the far edge, so the result has the input's size
            extra = [ctx.input_shape[2 + i] - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                               + dilation[i] * (kernel[i] - 1) + 1) for i in range(2)]
            grad_input = F.conv_transpose2d(grad, weight, None, stride, padding, extra, groups, dilation)
        else:  # first order only: torch's input-gradient kernel, faster on small batches (the input gives only its
            # shape: an expanded one-element tensor, as torch.nn.grad.conv2d_input passes on every device)
            shape_only = grad.new_empty(1).expand(ctx.input_shape)
            grad_input = torch.ops.aten.convolution_backward(grad, shape_only, weight, None, list(stride),
                                                             list(padding), list(dilation), False, [0, 0], groups,
                                                             [True, False, False])[0]
        return grad_input, None, None, None, None, None, None, None


# an image model's first layer on grey images: one input channel, many output channels
_FOLD_MAX_IN_CHANNELS = 1
# bound on the unfolded columns (N × C_in·kh·kw × output pixels) the fold path holds at once
_FOLD_MAX_COLUMNS = 1 << 24


class _InputGradientByFold(torch.autograd.Function):
    """A convolution's input gradient as ``fold(Wᵀ·grad)`` (the transpose of conv = W·unfold(x)); its own backward
    is the convolution itself (the adjoint of the transpose), one forward-sized convolution.

    Why: torch's CPU kernels for the input gradient of a layer with one input channel are several times
    slower than its forward (torch 2.14, one thread, 64×32×28×28 → 64×1×28×28: 2.7–3.3 ms against 0.44 ms for
    the forward). Wᵀ·grad as a 1×1 convolution (kh·kw output channels) and a col2im take about 1 ms.
    A 1×1 convolution rather than a batched product: oneDNN gives each image the same bits for any batch size
    and thread count, MKL's batched product does not on two threads (so a batched attack would no longer equal
    its per-image loop). With three input channels the 1×1 convolution was slower than torch's kernel on one
    thread (13 ms against 4.6 ms on 64×3×32×32), so only one-channel layers take this path."""

    @staticmethod
    def forward(ctx, grad, weight, input_shape, stride, padding, dilation):
        ctx.save_for_backward(weight)
        ctx.args = (stride, padding, dilation)
        c_out, columns = weight.shape[0], weight[0].numel()
        as_1x1 = weight.reshape(c_out, columns).t().reshape(columns, c_out, 1, 1)
        # images at a time within the memory bound: every batch size takes this path, the same bits per image
        rows = max(1, _FOLD_MAX_COLUMNS // (columns * grad.shape[2] * grad.shape[3]))
        return torch.cat([
            F.fold(F.conv2d(part, as_1x1).flatten(2),  # (n, C_in·kh·kw, L) → the input's shape
                   tuple(input_shape[2:]), tuple(weight.shape[2:]), dilation=dilation, padding=padding, stride=stride)
            for part in grad.split(rows)])

    @staticmethod
    def backward(ctx, gg):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation = ctx.args
        return F.conv2d(gg, weight, None, stride, padding, dilation), None, None, None, None, None


def _input_gradient_by_fold(grad: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size, stride, padding,
                            dilation) -> torch.Tensor:
    return _InputGradientByFold.apply(grad, weight, input_shape, stride, padding, dilation)


def _fold_applies(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    return (groups == 1 and weight.shape[1] <= _FOLD_MAX_IN_CHANNELS and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64))


def _input_only_conv2d(args: tuple, kwargs: dict, fold_only: bool = False) -> torch.Tensor | None:
    """:class:`_InputOnlyConv2d` for ``F.conv2d``'s arguments, or None for torch's own op (``fold_only``: unless
    the fold path applies)."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args), **kwargs)
    padding = bound.get("padding", 0)
    x, weight, groups = bound["input"], bound["weight"].detach(), bound.get("groups", 1)
    if isinstance(padding, str) or x.dim() != 4:  # 'same'/'valid' and unbatched inputs: torch's op
        return None
    bias = bound.get("bias")
    # first and second order alike (one path for every map, so that a map is the same bits wherever it is made)
    by_fold = _fold_applies(x, weight, groups)
    if fold_only and not by_fold:
        return None
    return _InputOnlyConv2d.apply(x, weight, None if bias is None else bias.detach(), _pair(bound.get("stride", 1)),
                                  _pair(padding), _pair(bound.get("dilation", 1)), groups, by_fold)


class FastKernels(TorchFunctionMode):
    """While active: ReLU and ``F.max_pool2d`` take the paths above (any model, any module layout).

    ``with FastKernels(): ...`` around a forward (and the backward passes that follow it) gives the
    same numbers as without, faster where double backprop or CPU pooling dominates.

    ``weight_gradients=False`` (explanation attacks: only the input is differentiated) also makes the
    weights of ``F.conv2d`` and ``F.linear`` constants: no gradient reaches the parameters (nor their
    ``.grad``), and convolutions take :class:`_InputOnlyConv2d`. ``fold_one_channel=True`` (a map's
    first-order pass) does so for one-channel convolutions only, which then take the fold path; the other
    layers keep torch's kernels, faster at first order on large batches (ResNet-18 integrated gradients 8 %).
    """

    def __init__(self, weight_gradients: bool = True, activations: Any = None, fold_one_channel: bool = False):
        super().__init__()
        self.weight_gradients = weight_gradients
        self.fold_one_channel = _folds(weight_gradients, fold_one_channel)
        # an object whose ``replace(func, args, kwargs)`` swaps activation functions (the Softplus view's),
        # returning NotImplemented for the rest: one mode does both, one Python call per torch operation
        self.activations = activations
        self._tokens: list = []

    @contextlib.contextmanager
    def replacing_activations(self, activations: Any):
        """Within: ``activations`` replace this mode's (the Softplus view inside an attack's context)."""
        before, self.activations = self.activations, activations
        try:
            yield self
        finally:
            self.activations = before

    def __enter__(self):
        self._tokens.append(_ACTIVE.set(self))
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.reset(self._tokens.pop())
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.activations is not None:
            out = self.activations.replace(func, args, kwargs)
            if out is not NotImplemented:
                return out
        if func in _OUT_OF_PLACE_RELU and not kwargs.get("inplace", args[1] if len(args) > 1 else False):
            return relu(args[0])
        if func is F.max_pool2d:
            return max_pool2d(*args, **kwargs)
        if func is F.conv2d and self.fold_one_channel:
            out = _input_only_conv2d(args, kwargs, fold_only=self.weight_gradients)
            if out is not None:
                return out
        elif not self.weight_gradients and func is F.linear:
            bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
            bias = bound.get("bias")
            return F.linear(bound["input"], bound["weight"].detach(), None if bias is None else bias.detach())
        return func(*args, **kwargs)


_ACTIVE: ContextVar[FastKernels | None] = ContextVar("explrobust_fast_kernels", default=None)


def active() -> FastKernels | None:
    """The innermost active :class:`FastKernels` context of this thread/task, if any."""
    return _ACTIVE.get()


# inputs of first-order passes below this many elements (a few small images) get no mode where every path above is
# bitwise torch's own: the mode's Python calls on each operation would cost more than they save
_SMALL_INPUT_ELEMENTS = 1 << 12


def fast_kernels(weight_gradients: bool = True, first_order_input: torch.Tensor | None = None,
                 fold_one_channel: bool = False) -> FastKernels | contextlib.nullcontext:
    """A :class:`FastKernels` context, or a no-op one inside an active context that already does as much:
    every active mode adds a Python call to each torch operation, which small batches notice.
    (``weight_gradients=True`` asks for nothing; inside an attack's ``False`` the weights stay constant.)
    ``fold_one_channel``: a map's pass, whose one-channel convolutions take the fold path (see :class:`FastKernels`).
    ``first_order_input``: the input of a pass that is differentiated once only; a small one gets no mode, unless
    the mode changes its bits: one-channel images whose first layer's input gradient is a fold at every batch size,
    so that an image's map never depends on the batch it is in."""
    folds = _folds(weight_gradients, fold_one_channel)
    outer = _ACTIVE.get()
    if (outer is not None and (weight_gradients or not outer.weight_gradients)
            and (outer.fold_one_channel or not folds)):
        return contextlib.nullcontext()
    if (first_order_input is not None and first_order_input.numel() < _SMALL_INPUT_ELEMENTS
            and not (folds and _one_channel_cpu_images(first_order_input))):
        return contextlib.nullcontext()
    return FastKernels(weight_gradients, fold_one_channel=fold_one_channel)


def _folds(weight_gradients: bool, fold_one_channel: bool) -> bool:
    """Whether a mode with these settings sends one-channel convolutions through the fold path (attacks always)."""
    return fold_one_channel or not weight_gradients


def _one_channel_cpu_images(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] <= _FOLD_MAX_IN_CHANNELS and x.device.type == "cpu"
