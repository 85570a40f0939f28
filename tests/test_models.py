import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explrobust_core.explain import attribute
from explrobust_core.metrics import attribution_to_map, explanation_loss
from explrobust_core.models import (ARCHITECTURES, Normalize, beta_schedule, build_model, device_of, predict,
                                    softplus_view)
from explrobust_core.registry import ConfigError

SMALL = {
    "convnet": {},
    "rar_cnn": {"hidden": 64},
    "resnet18": {"base_width": 8},
    "wideresnet": {"depth": 10, "widen_factor": 1},
    "mobilenetv2": {"width_mult": 0.25},
}


def make(arch, shape=(1, 8, 8), classes=10, **cfg):
    c = shape[0]
    return build_model(arch, input_shape=shape, num_classes=classes, mean=[0.5] * c, std=[0.25] * c,
                       config={**SMALL[arch], **cfg}).eval()


def test_registry_covers_the_seed_families():
    assert set(SMALL) <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 43), ((1, 8, 8), 3)])
def test_every_architecture_any_shape(arch, shape, classes):
    model = make(arch, shape, classes)
    x = torch.rand(2, *shape)
    assert model(x).shape == (2, classes)
    assert model.embed(x).ndim == 2
    assert isinstance(next(iter(model.children())), Normalize)


def test_normalize_is_the_first_layer_and_uses_card_statistics():
    model = make("convnet")
    x = torch.rand(3, 1, 8, 8)
    expected = model.head(model.features((x - 0.5) / 0.25))
    torch.testing.assert_close(model(x), expected)


def test_wrn_presets_and_bad_depth():
    wrn_28_10 = build_model("wideresnet", input_shape=(3, 32, 32), num_classes=10, mean=[0.5] * 3, std=[0.5] * 3)
    # WRN-28-10 has about 36.5M parameters (Zagoruyko & Komodakis, Table 1)
    assert 36.0e6 < sum(p.numel() for p in wrn_28_10.parameters()) < 36.6e6
    wrn_40_2 = build_model("wideresnet", input_shape=(3, 32, 32), num_classes=10, mean=[0.5] * 3, std=[0.5] * 3,
                           config={"depth": 40, "widen_factor": 2})
    assert 2.1e6 < sum(p.numel() for p in wrn_40_2.parameters()) < 2.3e6
    with pytest.raises(ValueError, match="6n\\+4"):
        make("wideresnet", depth=27)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="width1"):
        make("convnet", width1=0)
    with pytest.raises(ConfigError, match="colour"):
        make("convnet", colour=3)


def test_softplus_view_shares_storage_and_beta_is_adjustable():
    model = make("resnet18")
    view = softplus_view(model, beta=10.0)
    assert [p.data_ptr() for p in view.parameters()] == [p.data_ptr() for p in model.parameters()]
    x = torch.rand(4, 1, 8, 8)
    before = view(x)
    with torch.no_grad():
        model.head.bias.add_(1.0)  # a change to the model is seen by the view: no copy exists
    torch.testing.assert_close(view(x), before + 1.0)
    view.beta = 50.0
    assert view.beta == 50.0
    with pytest.raises(ValueError):
        view.beta = 0.0


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_softplus_view_converges_to_the_model_as_beta_grows(arch):
    model = make(arch).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    reference = model(x)
    gaps = [(softplus_view(model, b)(x) - reference).abs().max().item() for b in (1.0, 10.0, 100.0, 1e4)]
    assert gaps[0] > 1e-3  # the view really differs from ReLU at small β
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-2 * gaps[0]


class _Functional(nn.Module):
    """A foreign model that calls F.relu, Tensor.relu, relu6 and leaky_relu directly."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        h = F.relu(h) + h.relu() + F.relu6(h) + F.leaky_relu(h, 0.1)
        return self.b(h)


def test_softplus_view_catches_functional_relus():
    model = _Functional().double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    view = softplus_view(model, beta=5.0)
    (g,) = torch.autograd.grad(view(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert h.abs().sum() > 0  # ReLU-family second derivatives are zero; these are not
    torch.testing.assert_close(softplus_view(model, 1e6)(x), model(x), atol=1e-5, rtol=0)


def test_second_order_on_the_view_is_nonzero_and_matches_finite_differences():
    torch.manual_seed(0)
    model = make("convnet", width1=4, width2=4, hidden=8).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    target_map = attribution_to_map(torch.rand(2, 1, 8, 8, dtype=torch.float64))
    cls = torch.tensor([1, 2])

    def loss(inp, net):
        m = attribution_to_map(attribute(net, inp, "gradient", target=cls, create_graph=True))
        return explanation_loss(m, target_map).sum()

    xr = x.clone().requires_grad_(True)
    (g_relu,) = torch.autograd.grad(loss(xr, model), xr, allow_unused=True)
    assert g_relu is None or g_relu.abs().max() == 0  # ReLU: the map's input gradient vanishes

    view = softplus_view(model, beta=10.0)
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xs, view), xs)
    assert g.abs().max() > 0
    assert torch.autograd.gradcheck(lambda inp: loss(inp, view), (xs,), eps=1e-6, atol=1e-8, rtol=1e-4)


def test_beta_schedule_is_geometric():
    s = beta_schedule(10, 100, 5)
    assert s[0] == pytest.approx(10) and s[-1] == pytest.approx(100)
    ratios = [b / a for a, b in zip(s, s[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


# --------------------------------------------------------------------------- predict / device_of


def test_device_of_follows_the_weights_then_the_buffers_then_the_cpu():
    assert device_of(make("convnet")) == torch.device("cpu")
    assert device_of(nn.BatchNorm2d(3, affine=False)) == torch.device("cpu")  # buffers only
    assert device_of(nn.ReLU()) == torch.device("cpu")  # nothing at all
    if torch.cuda.is_available():
        assert device_of(make("convnet").cuda()).type == "cuda"


def test_predict_batches_like_one_call(digits_convnet, digits_test):
    """Tensor, dataset and picked indices give the argmax of one unbatched forward pass, on the CPU."""
    x = digits_test.images[:50]
    with torch.no_grad():
        direct = digits_convnet(x).argmax(1)
    by_tensor = predict(digits_convnet, x, batch_size=7)
    assert by_tensor.dtype == torch.long and by_tensor.device.type == "cpu"
    assert torch.equal(by_tensor, direct)
    assert torch.equal(predict(digits_convnet, digits_test, batch_size=64)[:50], direct)
    picked = [49, 3, 17, 3]
    assert torch.equal(predict(digits_convnet, digits_test, 3, indices=picked), direct[picked])
    assert torch.equal(predict(digits_convnet, x, 3, indices=picked), direct[picked])
    assert predict(digits_convnet, x[:0]).shape == (0,)


def test_predict_halves_a_batch_that_runs_out_of_memory_and_restores_the_mode(digits_convnet, digits_test):
    x = digits_test.images[:40]
    expected = predict(digits_convnet, x, batch_size=40)
    seen = []

    class Tight(nn.Module):  # runs out of (simulated) memory above 8 images, records the mode it ran in
        def __init__(self):
            super().__init__()
            self.__dict__["inner"] = digits_convnet  # not a submodule: the shared fixture's mode is never touched

        def forward(self, images):
            seen.append((images.shape[0], self.training))
            if images.shape[0] > 8:
                raise torch.OutOfMemoryError("simulated")
            return self.inner(images)

    model = Tight().train()
    assert torch.equal(predict(model, x, batch_size=40), expected)
    assert max(n for n, _ in seen if n <= 8) == 5 and not any(training for _, training in seen)
    assert model.training  # the caller's mode is left as it was


def test_pool_before_relu_gives_the_models_logits_and_gradients_bit_for_bit():
    """The ReLU → MaxPool2d pairs swapped (max pooling commutes with ReLU): logits, input gradients and parameter
    gradients equal the model's exactly, on inputs with ties and all-negative windows; the model is not changed,
    and other models come back as they are."""
    import copy

    from explrobust_core.models import build_model, pool_before_relu

    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 12, 12), num_classes=4, mean=[0.5], std=[0.25],
                        config={"width1": 6, "width2": 8, "hidden": 16})
    before = copy.deepcopy(model.state_dict())
    order = [type(m) for m in model.features]
    view = pool_before_relu(model)
    assert view is not model and [type(m) for m in view.features][:3] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert [type(m) for m in model.features] == order  # the model keeps its own order
    assert dict(view.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))  # shared, not copied
    x = torch.rand(5, 1, 12, 12)
    x[0] = 0.0  # flat image: ties in every window, all-negative windows after the first convolution's bias
    x[1, :, :6] = 1.0
    grads = []
    for net in (model, view):
        model.zero_grad()
        inp = x.clone().requires_grad_(True)
        out = net(inp)
        (g,) = torch.autograd.grad(out[:, 1].sum(), inp, retain_graph=True)
        out.logsumexp(1).sum().backward()
        grads.append((out.detach(), g, [p.grad.clone() for p in model.parameters()]))
    (o1, g1, p1), (o2, g2, p2) = grads
    assert torch.equal(o1, o2) and torch.equal(g1, g2) and all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    other = build_model("resnet18", input_shape=(3, 16, 16), num_classes=3, mean=[0.5] * 3, std=[0.25] * 3)
    assert pool_before_relu(other) is other


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_attack_view_pools_first_with_the_softplus_views_maps_and_second_derivatives(dtype, tol):
    """The attacks' Softplus view pools before the Softplus (it commutes with max pooling): its logits, gradient
    maps and the gradient of a map objective (the attack's double backprop) are the plain Softplus view's."""
    from explrobust_core.attacks.explanation import attack_view
    from explrobust_core.models import build_model, softplus_view

    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 12, 12), num_classes=4, mean=[0.5], std=[0.25],
                        config={"width1": 6, "width2": 8, "hidden": 16}).to(dtype).eval()
    x = torch.rand(6, 1, 12, 12, dtype=dtype)
    view, _ = attack_view(model, x, 10.0)
    assert [type(m) for m in view.model.features][1:3] == [nn.MaxPool2d, nn.ReLU]
    mask = torch.rand(6, 144, dtype=dtype) < 0.2
    results = []
    for net in (view, softplus_view(model, 10.0)):
        inp = x.clone().requires_grad_(True)
        logits = net(inp)
        (g,) = torch.autograd.grad(logits[:, 1].sum(), inp, create_graph=True)
        (h,) = torch.autograd.grad((g.abs().flatten(1) * mask).sum(), inp)
        results.append((logits.detach(), g.detach(), h))
    for ours, plain in zip(*results):
        torch.testing.assert_close(ours, plain, rtol=tol, atol=tol * plain.abs().max().item())
