"""Our differentiable explanations against captum (the independent implementation)."""

import pytest
import torch
from captum.attr import (GradientShap, InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam,
                         NoiseTunnel, Saliency)

from explrobust_core.explain import (EXPLAINERS, IntegratedGradientsConfig, NotDifferentiableError, attribute,
                                     explanation_maps, last_conv_layer, make_baseline, resolve_target)
from explrobust_core.models import build_model, softplus_view
from explrobust_core.registry import ConfigError

RTOL = 1e-5


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module", params=["convnet", "resnet18"])
def net(request, digits_train):
    """Two architectures, trained briefly on digits so the attributions are not noise."""
    from conftest import fit

    info = digits_train.info
    cfg = {"base_width": 8} if request.param == "resnet18" else {}
    torch.manual_seed(0)
    model = build_model(request.param, input_shape=info.input_shape, num_classes=10, mean=info.mean, std=info.std,
                        config=cfg)
    return fit(model, digits_train.images[:600], digits_train.labels[:600], epochs=2).double()


@pytest.fixture(scope="module")
def batch(digits_test):
    """Digits have 17 grey levels: exact ties put max-pool windows on kinks, where implementations that
    batch differently may round the other way. A small seeded jitter leaves no two pixels equal."""
    x, y = digits_test.batch(range(12))
    jitter = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return 0.98 * x.double() + 0.02 * jitter, y


def test_gradient_equals_captum_saliency(net, batch):
    x, y = batch
    ours = attribute(net, x, "gradient", target=y)
    theirs = Saliency(net).attribute(x, target=y, abs=False)
    assert rel_err(ours, theirs) < RTOL


def test_gradient_x_input_equals_captum(net, batch):
    x, y = batch
    ours = attribute(net, x, "gradient_x_input", target=y)
    assert rel_err(ours, InputXGradient(net).attribute(x, target=y)) < RTOL


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
def test_integrated_gradients_equals_captum(net, batch, rule):
    """Compared on a random (uniform) baseline: with the all-zero image, the left rule's α = 0 point
    puts activations exactly on ReLU kinks, where CPU kernels that round differently flip gradients.
    Completeness on the zero baseline is checked separately (on a smooth model)."""
    x, y = batch
    ours = attribute(net, x, "integrated_gradients", target=y, rule=rule, n_steps=24, internal_batch_size=50,
                     baseline="uniform", seed=5)
    baseline = make_baseline(x, IntegratedGradientsConfig(baseline="uniform", seed=5))
    theirs = IntegratedGradients(net).attribute(x, target=y, method=rule, n_steps=24, baselines=baseline)
    assert rel_err(ours, theirs) < RTOL


def test_trapezoid_is_the_textbook_rule_and_differs_from_captum_by_its_step(net, batch):
    """captum 0.9's trapezoid uses step 1/n with halved ends (weights sum to (n−1)/n)."""
    x, y = batch
    n = 16
    ours = attribute(net, x, "integrated_gradients", target=y, rule="riemann_trapezoid", n_steps=n,
                     baseline="uniform", seed=5)
    baseline = make_baseline(x, IntegratedGradientsConfig(baseline="uniform", seed=5))
    theirs = IntegratedGradients(net).attribute(x, target=y, method="riemann_trapezoid", n_steps=n, baselines=baseline)
    assert rel_err(ours * (n - 1) / n, theirs) < RTOL


def test_integrated_gradients_completeness():
    """Σ attribution = f(x) − f(baseline) on a smooth model (softplus view, no max-pool kinks)."""
    torch.manual_seed(0)
    model = build_model("wideresnet", input_shape=(1, 8, 8), num_classes=10, mean=[0.3], std=[0.4],
                        config={"depth": 10, "widen_factor": 1}).eval().double()
    smooth = softplus_view(model, beta=5.0)
    x, y = torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.arange(6)
    attr = attribute(smooth, x, "integrated_gradients", target=y, n_steps=64)
    with torch.no_grad():
        gap = (smooth(x) - smooth(torch.zeros_like(x))).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, rtol=1e-6, atol=1e-9)


def test_internal_batch_size_does_not_change_results(net, batch):
    x, y = batch
    a = attribute(net, x, "integrated_gradients", target=y, n_steps=10, internal_batch_size=1)
    b = attribute(net, x, "integrated_gradients", target=y, n_steps=10, internal_batch_size=10_000)
    torch.testing.assert_close(a, b)


def test_smoothgrad_without_noise_is_the_gradient(net, batch):
    x, y = batch
    torch.testing.assert_close(attribute(net, x, "smoothgrad", target=y, stdev=0.0, n_samples=3),
                               attribute(net, x, "gradient", target=y))


def test_smoothgrad_matches_captum_noise_tunnel_in_expectation(net, batch):
    x, y = batch
    n = 600
    ours = attribute(net, x, "smoothgrad", target=y, stdev=0.1, n_samples=n, internal_batch_size=4096)
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(net)).attribute(x, target=y, nt_type="smoothgrad", nt_samples=n, stdevs=0.1,
                                                  nt_samples_batch_size=200, abs=False)
    # two Monte-Carlo estimates of the same expectation: close relative to the map's size
    assert (ours - theirs).norm() / theirs.norm() < 0.1
    # and clearly different from the noiseless gradient: the noise matters
    plain = attribute(net, x, "gradient", target=y)
    assert (ours - plain).norm() / plain.norm() > (ours - theirs).norm() / theirs.norm()


def test_gradient_shap_matches_captum_in_expectation_and_ig(net, batch):
    x, y = batch
    n = 1500
    ours = attribute(net, x, "gradient_shap", target=y, n_samples=n, stdev=0.0, internal_batch_size=4096)
    torch.manual_seed(0)
    theirs = GradientShap(net).attribute(x, target=y, baselines=torch.zeros_like(x), n_samples=n, stdevs=0.0)
    ig = attribute(net, x, "integrated_gradients", target=y, n_steps=64)
    assert (ours - theirs).norm() / theirs.norm() < 0.1
    assert (ours - ig).norm() / ig.norm() < 0.1  # zero-baseline GradientSHAP is a Monte-Carlo IG


def test_seeded_methods_are_reproducible(net, batch):
    x, y = batch
    for method in ("smoothgrad", "gradient_shap"):
        a = attribute(net, x, method, target=y, seed=3, n_samples=4)
        b = attribute(net, x, method, target=y, seed=3, n_samples=4)
        c = attribute(net, x, method, target=y, seed=4, n_samples=4)
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("baseline", ["zero", "blur", "uniform"])
def test_ig_baselines(net, batch, baseline):
    x, y = batch
    a = attribute(net, x, "integrated_gradients", target=y, baseline=baseline, n_steps=8)
    assert a.shape == x.shape and torch.isfinite(a).all()


@pytest.mark.parametrize("method", EXPLAINERS.names("differentiable"))
def test_create_graph_reaches_the_input_on_the_softplus_view(net, batch, method):
    x, y = batch
    xs = x[:3].clone().requires_grad_(True)
    attr = attribute(softplus_view(net, 10.0), xs, method, target=y[:3], create_graph=True,
                     **({"n_samples": 3} if method in ("smoothgrad", "gradient_shap") else {}))
    (g,) = torch.autograd.grad(attr.pow(2).sum(), xs)
    assert g.abs().max() > 0


@pytest.mark.parametrize("method", EXPLAINERS.names("display"))
def test_display_methods_are_detached_and_refuse_create_graph(net, batch, method):
    x, y = batch
    model = net.float()
    try:
        a = attribute(model, x.float()[:4], method, target=y[:4])
        assert a.shape == x[:4].shape and not a.requires_grad and torch.isfinite(a).all()
        with pytest.raises(NotDifferentiableError):
            attribute(model, x.float()[:4], method, target=y[:4], create_graph=True)
    finally:
        net.double()


def test_grad_cam_map_equals_captum_layer_grad_cam(net, batch):
    x, y = batch
    ours = explanation_maps(net, x, "grad_cam", target=y, normalize="none")
    cam = LayerGradCam(net, last_conv_layer(net)).attribute(x, target=y, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear").squeeze(1)
    torch.testing.assert_close(ours, theirs)


def test_targets(net, batch):
    x, y = batch
    pred = net(x).argmax(1)
    assert torch.equal(resolve_target(net, x, "predicted"), pred)
    assert torch.equal(resolve_target(net, x, "true", y), y)
    assert torch.equal(resolve_target(net, x, 3), torch.full((12,), 3))
    with pytest.raises(ValueError, match="labels"):
        resolve_target(net, x, "true")
    with pytest.raises(ValueError, match="targets for 12 images"):
        resolve_target(net, x, [1, 2])
    with pytest.raises(ConfigError, match="n_steps"):
        attribute(net, x, "integrated_gradients", n_steps=0)


def test_explanation_maps_are_sum_normalised(net, batch):
    x, y = batch
    maps = explanation_maps(net, x, "gradient", target=y)
    assert maps.shape == (12, 8, 8)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(12, dtype=maps.dtype))


def test_model_space_gradient_x_input_is_z_times_the_gradient_in_z():
    """Dombrowski's reference form, computed by hand on the normalised input z = (x − μ)/σ."""
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(3, 8, 8), num_classes=5, mean=[0.2, 0.5, 0.7],
                        std=[0.3, 0.1, 0.25]).eval().double()
    x, y = torch.rand(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    z = model.normalize(x).detach().requires_grad_(True)
    score = model.head(model.features(z)).gather(1, y[:, None]).sum()
    (grad_z,) = torch.autograd.grad(score, z)
    ours = attribute(model, x, "gradient_x_input", target=y, space="model")
    torch.testing.assert_close(ours, z.detach() * grad_z, rtol=1e-10, atol=1e-12)
    pixel = attribute(model, x, "gradient_x_input", target=y)
    assert not torch.allclose(ours, pixel)  # a real difference: background pixels count in model space
    # zero-baseline IG in model space = pixel IG from the mean image (the normalised zero)
    ig_model = attribute(model, x, "integrated_gradients", target=y, space="model", n_steps=16)
    mean_image = model.normalize.mean.double().expand_as(x)
    ig_from_mean = IntegratedGradients(model).attribute(x, target=y, baselines=mean_image, n_steps=16,
                                                        method="gausslegendre")
    assert rel_err(ig_model, ig_from_mean) < RTOL


def test_model_space_needs_the_models_normalisation():
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="no Normalize layer"):
        attribute(plain, torch.rand(2, 1, 4, 4), "gradient_x_input", target=0, space="model")


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "integrated_gradients"])
def test_attribute_with_logits_is_attribute_plus_one_forward(method):
    from explrobust_core.explain import attribute_with_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Softplus(), torch.nn.Linear(8, 3))
    x = torch.rand(4, 3, 2, 2)
    target = torch.tensor([0, 2, 1, 1])
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    attr, logits = attribute_with_logits(model, x, method, target, config=options)
    torch.testing.assert_close(attr, attribute(model, x, method, target=target, config=options), rtol=0, atol=0)
    torch.testing.assert_close(logits, model(x).detach(), rtol=0, atol=0)
    assert not logits.requires_grad
    x_req = x.clone().requires_grad_(True)
    attr_g, logits_g = attribute_with_logits(model, x_req, method, target, create_graph=True, config=options)
    assert attr_g.requires_grad and logits_g.requires_grad  # both carry the graph back to the input


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "integrated_gradients"])
def test_the_predicted_class_is_read_off_the_attributions_own_forward_pass(net, batch, method):
    from explrobust_core.explain import attribute_with_logits

    x, _ = batch
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    pred = net(x).argmax(1)
    calls = []  # on the classifier's head, which the explainers' pool-first view of the ConvNet shares
    hook = net.head.register_forward_hook(lambda *_: calls.append(1))
    try:
        attr = attribute(net, x, method, config=options)  # target="predicted"
        attr_none, logits = attribute_with_logits(net, x, method, None, config=options)
    finally:
        hook.remove()
    expected = attribute(net, x, method, target=pred, config=options)
    torch.testing.assert_close(attr, expected, rtol=0, atol=0)
    torch.testing.assert_close(attr_none, expected, rtol=0, atol=0)
    assert torch.equal(logits.argmax(1), pred)
    # gradient and gradient × input: one forward pass per call; integrated gradients: a prediction pass and its path
    if method != "integrated_gradients":
        assert len(calls) == 2, calls
