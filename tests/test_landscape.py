import pytest
import torch
import torch.nn.functional as F

from explrobust_core.landscape import (ce_loss_fn, curvature_summary, explanation_change_fn, hutchinson_trace,
                                       input_landscape, top_eigenvalue)
from explrobust_core.models import build_model, softplus_view


@pytest.fixture(scope="module")
def images(mnist_test):
    """Three test digits with a faint seeded jitter, so that no two pixels are equal. On the raw digits the
    exact-zero background and the runs of saturated stroke pixels (0.98…) put max-pool windows on exact ties;
    which tied entry gets the gradient (and so the map) then depends on how a CPU kernel rounds for a given
    batch size, and maps of the same image computed in two batchings need not agree."""
    x, y = mnist_test.batch(range(3))
    jitter = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    return 0.98 * x + 0.02 * jitter, y


def test_2d_directions_are_orthogonal_with_equal_norms(mnist_convnet, images):
    x, y = images
    r = input_landscape(mnist_convnet, x, y, dims=2, direction="adversarial", points=5, losses=["ce"])
    d = r.tensors["directions"]  # (N, 2, C, H, W)
    a, b = d[:, 0].flatten(1), d[:, 1].flatten(1)
    assert torch.allclose((a * b).sum(1), torch.zeros(3), atol=1e-3)
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=1))
    assert bool((d[:, 0].abs() == 1).all())  # the sign direction: an L∞ step per unit of the axis


@pytest.mark.parametrize("direction", ["random", "adversarial", "explanation"])
def test_grid_centre_is_the_clean_loss(mnist_convnet, images, direction):
    x, y = images
    r = input_landscape(mnist_convnet, x, y, dims=1, direction=direction, points=7, radius=0.2,
                        losses=["ce", "explanation_change", "explanation_target"], target_images=x.flip(0),
                        batch_size=5)
    with torch.no_grad():
        ce = F.cross_entropy(mnist_convnet(x), y, reduction="none")
    torch.testing.assert_close(r.extra["grids"]["ce"][:, 3].float(), ce)
    assert float(r.extra["grids"]["explanation_change"][:, 3].abs().max()) < 1e-12  # batch-size rounding only
    assert r.extra["grids"]["explanation_target"].shape == (3, 7)
    if direction == "adversarial":  # CE grows along the FGSM direction
        assert bool((r.extra["grids"]["ce"][:, -1] > r.extra["grids"]["ce"][:, 3]).all())


def test_2d_grid_matches_pointwise_evaluation(mnist_convnet, images):
    x, y = images
    r = input_landscape(mnist_convnet, x[:1], y[:1], dims=2, direction="random", points=5, radius=0.1,
                        losses=["ce"], batch_size=7)
    d = r.tensors["directions"][0]
    axis = torch.linspace(-0.1, 0.1, 5)
    with torch.no_grad():
        point = x[:1] + axis[1] * d[0] + axis[4] * d[1]
        expected = F.cross_entropy(mnist_convnet(point), y[:1])
    assert float(r.extra["grids"]["ce"][0, 1, 4]) == pytest.approx(float(expected), rel=1e-5)


def test_attack_endpoints_are_projected_on_the_plane(mnist_convnet, images):
    x, y = images
    r0 = input_landscape(mnist_convnet, x, y, dims=2, direction="adversarial", points=5, losses=["ce"])
    d = r0.tensors["directions"]
    ends = x + 0.05 * d[:, 0] - 0.02 * d[:, 1]
    r = input_landscape(mnist_convnet, x, y, dims=2, direction="adversarial", points=5, losses=["ce"], attack_points=ends)
    torch.testing.assert_close(r.extra["attack_coordinates"], torch.tensor([[0.05, -0.02]] * 3, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def _tiny():
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 4, 4), num_classes=3, mean=[0.5], std=[0.5],
                        config={"width1": 3, "width2": 3, "hidden": 6}).double().eval()
    return softplus_view(model, 2.0)


def test_hutchinson_and_power_iteration_match_the_exact_hessian():
    net = _tiny()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2])
    fn = ce_loss_fn(net, y)
    for i in range(2):
        h = torch.autograd.functional.hessian(
            lambda v: F.cross_entropy(net(v.view(1, 1, 4, 4)), y[i:i + 1]), x[i].flatten()).view(16, 16)
        eig = torch.linalg.eigvalsh(h)
        top = eig[eig.abs().argmax()]
        trace = hutchinson_trace(fn, x, n_samples=3000)[i]
        power = top_eigenvalue(fn, x, iterations=300)[i]
        assert abs(trace - h.trace()) <= 0.05 * abs(h.trace())
        assert abs(power - top) <= 0.02 * abs(top)


def test_explanation_loss_hessian_is_nonzero_on_the_view_and_summary_runs(mnist_convnet, images):
    x, y = images
    fn = explanation_change_fn(softplus_view(mnist_convnet, 10.0), x[:1], y[:1])
    assert float(hutchinson_trace(fn, x[:1], n_samples=4).abs()) > 0
    r = curvature_summary(mnist_convnet, x[:2], y[:2], n_samples=4, iterations=5)
    assert {"ce_hessian_trace", "explanation_change_top_eigenvalue", "ce_mean_abs_delta"} <= set(r.summary)


def test_landscape_config_errors():
    from explrobust_core.landscape import LandscapeConfig

    with pytest.raises(ValueError, match="odd"):
        LandscapeConfig(points=40)
    with pytest.raises(ValueError, match="display-only"):
        LandscapeConfig(explainer="occlusion")
    with pytest.raises(ValueError):
        LandscapeConfig(points=1001)


def test_share_of_grid_points_outside_the_unit_box_is_counted(mnist_convnet, images):
    x, y = images
    r = input_landscape(mnist_convnet, x, y, dims=2, direction="adversarial", points=5, radius=0.2, losses=["ce"])
    d = r.tensors["directions"]
    axis = torch.linspace(-0.2, 0.2, 5)
    for i in range(x.shape[0]):  # every grid point checked one by one
        outside = sum(bool(((p < 0) | (p > 1)).any()) for p in
                      (x[i] + a * d[i, 0] + b * d[i, 1] for a in axis for b in axis))
        assert float(r.per_image["share_outside_unit_box"][i]) == pytest.approx(outside / 25)
    # digits have a black background: a ±0.2 sign step leaves [0, 1] at every point but the centre
    assert r.extra["share_outside_unit_box"] == pytest.approx(24 / 25)
