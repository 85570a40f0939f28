"""Property-based fuzzing (hypothesis): the metrics on random shapes, constant maps, ties and zeros
(no crash, no NaN where the number is defined, scipy's value where scipy has one), map
post-processing, and the loaders of untrusted bytes (cards, state dicts, images): they either
return something valid or raise their own clear error type, never anything else."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from explrobust_core import metrics as M

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # ssim: ~0.15 s a call
BYTES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ["uniform", "ties", "constant", "zeros", "sparse", "tiny", "large"]


@st.composite
def map_batch(draw, n=None, h=None, w=None, kind=None, signed=False):
    """A float32 tensor (N, H, W) of one of several awkward kinds."""
    n = draw(st.integers(1, 3)) if n is None else n
    h = draw(st.integers(1, 7)) if h is None else h
    w = draw(st.integers(1, 7)) if w is None else w
    kind = draw(st.sampled_from(KINDS)) if kind is None else kind
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (n, h, w)
    if kind == "uniform":
        a = rng.random(shape)
    elif kind == "ties":
        a = rng.integers(0, 3, shape).astype(float)
    elif kind == "constant":
        a = np.full(shape, draw(st.sampled_from([0.0, 0.5, 3.0])))
    elif kind == "zeros":
        a = np.zeros(shape)
    elif kind == "sparse":
        a = rng.random(shape) * (rng.random(shape) < 0.2)
    elif kind == "tiny":
        a = rng.random(shape) * 1e-30
    else:  # large, but its square still fits in float32 (a squared difference of 1e30 is inf, honestly)
        a = rng.random(shape) * 1e15
    if signed:
        a = a * rng.choice([-1.0, 1.0], shape)
    # per image, sometimes a different kind: a batch mixes defined and undefined rows
    if n > 1 and draw(st.booleans()):
        a[0] = 0.0
    return torch.tensor(a, dtype=torch.float32)


@st.composite
def map_pair(draw):
    a = draw(map_batch())
    n, h, w = a.shape
    b = draw(st.one_of(map_batch(n=n, h=h, w=w), st.just(a.clone()), st.just(a.flip(-1).clone())))
    return a, b


def _constant_rows(t: torch.Tensor) -> torch.Tensor:
    f = t.flatten(1)
    return (f == f[:, :1]).all(1)


def _zero_rows(t: torch.Tensor) -> torch.Tensor:
    return (t.flatten(1) == 0).all(1)


# --------------------------------------------------------------------------- map post-processing


@FAST
@given(attr=st.integers(1, 3).flatmap(lambda c: st.tuples(st.just(c), map_batch(signed=True))))
def test_attribution_to_map_is_finite_nonnegative_and_sums_to_one(attr):
    c, base = attr
    a = base.unsqueeze(1).repeat(1, c, 1, 1)
    m = M.attribution_to_map(a)
    raw = M.attribution_to_map(a, "none")
    assert m.shape == base.shape and torch.isfinite(m).all() and (m >= 0).all()
    assert torch.equal(raw, a.abs().sum(1))
    totals = m.flatten(1).sum(1)
    nonzero = ~_zero_rows(base)
    assert torch.allclose(totals[nonzero], torch.ones_like(totals[nonzero]), atol=1e-4)
    assert (totals[~nonzero] == 0).all()
    assert torch.equal(M.attribution_to_map(base), M.attribution_to_map(base.unsqueeze(1)))  # (N,H,W) = one channel


# --------------------------------------------------------------------------- comparisons


@FAST
@given(pair=map_pair(), data=st.data())
def test_topk_intersection_is_a_share(pair, data):
    a, b = pair
    k = data.draw(st.integers(1, a[0].numel()))
    out = M.topk_intersection(a, b, k)
    assert out.shape == (a.shape[0],) and torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert torch.equal(M.topk_intersection(a, a, k), torch.ones_like(out))
    assert torch.equal(out, M.topk_intersection(b, a, k))
    with pytest.raises(ValueError):
        M.topk_intersection(a, b, a[0].numel() + 1)


def _scipy_rows(fn, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x, y in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy()):
            out.append(float(fn(x, y)[0]) if len(x) > 1 else float("nan"))
    return np.array(out)


@FAST
@given(pair=map_pair(), chunk=st.integers(1, 64))
def test_rank_correlations_match_scipy_with_ties_and_constants(pair, chunk):
    a, b = pair
    tau = M.kendall_tau(a, b).double().numpy()
    tau_chunked = M.kendall_tau(a, b, max_elements=chunk).double().numpy()
    rho = M.spearman_rho(a, b).double().numpy()
    ref_tau = _scipy_rows(lambda x, y: stats.kendalltau(x, y, variant="b"), a, b)
    ref_rho = _scipy_rows(stats.spearmanr, a, b)
    undefined = (_constant_rows(a) | _constant_rows(b)).numpy()
    for ours, ref in ((tau, ref_tau), (tau_chunked, ref_tau), (rho, ref_rho)):
        assert np.array_equal(np.isnan(ours), undefined), (ours, undefined)  # NaN exactly where undefined
        assert np.allclose(ours[~undefined], ref[~undefined], atol=1e-6)
        assert (np.abs(ours[~undefined]) <= 1).all()


@FAST
@given(pair=map_pair())
def test_pearson_cosine_mse_are_defined_where_they_should_be(pair):
    a, b = pair
    r = M.pearson(a, b)
    undefined = _constant_rows(a) | _constant_rows(b)
    assert torch.equal(torch.isnan(r), undefined)
    assert (r[~undefined].abs() <= 1).all()
    ref = _scipy_rows(stats.pearsonr, a, b)
    defined = ~undefined.numpy() & np.isfinite(ref)
    # float32 sums: the tolerance follows the spread of the values
    assert np.allclose(r.double().numpy()[defined], ref[defined], atol=1e-3)
    cos = M.cosine_similarity(a, b)
    zero = _zero_rows(a) | _zero_rows(b)
    assert torch.equal(torch.isnan(cos), zero) and (cos[~zero].abs() <= 1).all()
    for loss in (M.mse(a, b), M.explanation_loss(a, b)):
        assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert torch.equal(M.mse(a, a), torch.zeros(a.shape[0]))


@FAST
@given(pair=map_pair())
def test_center_of_mass_and_its_shift(pair):
    a, b = pair
    com = M.center_of_mass(a)
    empty = a.flatten(1).sum(1) == 0
    assert torch.equal(torch.isnan(com).any(1), empty)
    h, w = a.shape[1:]
    inside = com[~empty]
    assert (inside[:, 0] >= -1e-4).all() and (inside[:, 0] <= h - 1 + 1e-4).all()
    assert (inside[:, 1] >= -1e-4).all() and (inside[:, 1] <= w - 1 + 1e-4).all()
    shift = M.center_of_mass_shift(a, b)
    both = ~empty & (b.flatten(1).sum(1) != 0)
    assert torch.isfinite(shift[both]).all() and (shift[both] >= 0).all()
    assert torch.equal(torch.isnan(shift), ~both)


@SLOW
@given(a=map_batch())
def test_ssim_is_finite_and_one_on_identical_maps(a):
    b = torch.rand_like(a)
    s = M.ssim(a, b)
    assert s.shape == (a.shape[0],) and torch.isfinite(s).all()
    assert torch.allclose(M.ssim(a, a), torch.ones(a.shape[0]), atol=1e-4)


@SLOW
@given(pair=map_pair())
def test_every_registered_comparison_runs_on_awkward_maps(pair):
    a, b = pair
    for entry in M.COMPARISONS:
        opts = {"k": 1} if "k" in entry.config.model_fields else {}
        out = M.compare_maps(entry.name, a, b, **opts)
        assert out.shape == (a.shape[0],) and out.is_floating_point()
        assert not torch.isinf(out).any(), entry.name


@FAST
@given(a=map_batch(kind="constant"), b=map_batch(kind="uniform"))
def test_undefined_rows_do_not_poison_the_gradients_of_the_others(a, b):
    n, h, w = b.shape
    x = torch.cat([torch.zeros(1, h, w), b]).requires_grad_()  # row 0: all zero, undefined
    y = torch.rand(n + 1, h, w)
    for fn in (M.pearson, M.cosine_similarity, M.center_of_mass_shift):
        out = fn(x, y)
        (g,) = torch.autograd.grad(torch.nan_to_num(out, nan=0.0).sum(), x)
        assert torch.isfinite(g).all(), fn.__name__


# --------------------------------------------------------------------------- stability metrics


@FAST
@given(x=map_batch(kind="uniform"), samples=st.integers(1, 4), batch=st.integers(1, 7), radius=st.floats(0, 0.5))
def test_stability_metrics_are_finite_and_do_not_depend_on_the_batch_size(x, samples, batch, radius):
    x = x.unsqueeze(1)

    def explain(inp):
        return inp**2 + 0.1  # never all zero: the relative sensitivity is defined

    pert = (torch.rand(x.shape[0], samples, *x.shape[1:], generator=torch.Generator().manual_seed(0)) - 0.5) * radius
    one = M.max_sensitivity(explain, x, perturbations=pert, batch_size=batch)
    many = M.max_sensitivity(explain, x, perturbations=pert, batch_size=64)
    assert torch.isfinite(one).all() and (one >= 0).all() and torch.allclose(one, many, atol=1e-6)
    avg = M.avg_sensitivity(explain, x, radius=radius, n_samples=samples, seed=1, batch_size=batch)
    assert torch.isfinite(avg).all() and (avg >= 0).all()
    lip = M.local_lipschitz(explain, x, perturbations=pert, batch_size=batch)
    moved = (((x.unsqueeze(1) + pert).clamp(0, 1) - x.unsqueeze(1)).flatten(2).abs().sum(2) > 0).any(1)
    assert torch.equal(torch.isnan(lip), ~moved)
    assert (lip[moved] >= 0).all() and torch.isfinite(lip[moved]).all()


# --------------------------------------------------------------------------- loaders of untrusted bytes


def _valid_files():
    from safetensors.torch import save

    from explrobust_core.zoo import ModelCard

    state = {"a.weight": torch.arange(6.0).view(2, 3), "b.bias": torch.zeros(2)}
    pt = io.BytesIO()
    torch.save(state, pt)
    card = ModelCard(name="m", architecture="convnet", arch_config={"width1": 4, "width2": 4, "hidden": 8},
                     dataset="digits", input_shape=(1, 8, 8), mean=[0.3], std=[0.4], classes=list("0123456789"))
    return {".pt": pt.getvalue(), ".safetensors": save(state), "card": card.model_dump_json().encode()}


VALID = _valid_files()


@st.composite
def mutated(draw, blob: bytes):
    """A valid file with a few bytes flipped, a cut, or a splice of random bytes."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            data[pos:pos + 8] = bytes(min(8, len(data) - pos))
    return bytes(data)


@BYTES
@given(data=st.data(), suffix=st.sampled_from([".pt", ".safetensors"]))
def test_state_dict_loader_never_fails_unexpectedly(data, suffix):
    from explrobust_core.zoo import CheckpointError, state_dict_from_bytes

    other = ".pt" if suffix == ".safetensors" else ".safetensors"
    blob = data.draw(st.one_of(mutated(VALID[suffix]), mutated(VALID[other]), st.binary(max_size=256)))
    try:
        state = state_dict_from_bytes(blob, suffix, "fuzzed")
    except CheckpointError:
        return
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@BYTES
@given(data=st.data())
def test_card_parser_never_fails_unexpectedly(data):
    from explrobust_core.zoo import CheckpointError, ModelCard, card_from_json_text

    base = json.loads(VALID["card"])
    choice = data.draw(st.sampled_from(["field", "bytes", "drop"]))
    if choice == "field":
        base[data.draw(st.sampled_from(sorted(base) + ["extra"]))] = data.draw(json_values)
        text = json.dumps(base)
    elif choice == "drop":
        base.pop(data.draw(st.sampled_from(sorted(base))))
        text = json.dumps(base)
    else:
        text = data.draw(mutated(VALID["card"])).decode("utf-8", "replace")
    try:
        card = card_from_json_text(text, "fuzzed")
    except CheckpointError:
        return
    assert isinstance(card, ModelCard)
    assert all(np.isfinite(card.mean)) and all(s > 0 and np.isfinite(s) for s in card.std)


def _image_files():
    from PIL import Image

    out = []
    for mode, fmt in [("L", "PNG"), ("RGBA", "PNG"), ("RGB", "JPEG"), ("P", "GIF"), ("RGB", "BMP"), ("RGB", "WEBP"),
                      ("I;16", "PNG")]:
        buf = io.BytesIO()
        img = Image.new(mode, (12, 9))
        img.putdata([(i * 37) % 256 for i in range(12 * 9)] if mode in ("L", "P", "I;16")
                    else [tuple((i * k) % 256 for k in (3, 5, 7, 11)[: len(mode)]) for i in range(12 * 9)])
        img.save(buf, fmt)
        out.append(buf.getvalue())
    arr = io.BytesIO()
    np.save(arr, np.random.default_rng(0).random((9, 12)).astype(np.float32))
    out.append(arr.getvalue())
    return out


IMAGES = _image_files()


@BYTES
@given(data=st.data(), shape=st.sampled_from([(1, 28, 28), (3, 32, 32), (1, 8, 8)]))
def test_image_loader_never_fails_unexpectedly(data, shape):
    from explrobust_core.uploads import UploadError, load_image

    blob = data.draw(st.one_of(st.sampled_from(IMAGES).flatmap(mutated), st.binary(max_size=128)))
    try:
        out = load_image(blob, shape, name="fuzzed")
    except UploadError:
        return
    x = out.tensor
    assert x.shape == (1, *shape) and torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


@FAST
@given(indices=st.lists(st.integers(-5, 400), max_size=6))
def test_dataset_batches_check_their_indices(indices):
    from explrobust_core.data import load_dataset

    data = load_dataset("digits", "test")
    if all(0 <= i < len(data) for i in indices) and indices:
        x, y = data.batch(indices)
        assert x.shape[0] == len(indices) and torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    elif indices:
        with pytest.raises(IndexError, match="out of range"):
            data.batch(indices)


# --------------------------------------------------------------------------- every CLI command
# Random argument values of the right and the wrong types, on tiny budgets: every run ends with exit 0 or 2
# (a refusal), never a traceback, writes nothing outside its own output folder, and ends in bounded time.

# EXPLROBUST_FUZZ_EXAMPLES raises the count for a deeper run by hand; CI keeps it small
CLI = settings(max_examples=int(os.environ.get("EXPLROBUST_FUZZ_EXAMPLES", "5")), deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI_SECONDS = 60  # per call; the budgets below make a valid run take a few seconds at most

INT = st.sampled_from(["-1", "0", "1", "2", str(10**12), "x", "1.5", "nan", ""])
FLOAT = st.sampled_from(["-1", "0", "0.05", "1e9", "nan", "inf", "x", ""])
TEXT = st.one_of(st.sampled_from(["../x", "", "-", "a/b", "ok_name", "é"]),
                 st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=6))
INDICES = st.sampled_from(["0", "0,1", "0,0", "-1", "99999", "x", "1,2,3", ""])
OUT_FILE = st.sampled_from(["{out}/r.json", "{out}/a_file", "{out}/a_dir", "/dev/null", "{out}/a_file/below.json",
                            "{out}/new/deeper/r.json"])
OUT_DIR = st.sampled_from(["{out}/o", "{out}/a_file", "{out}/a_dir", "/dev/null", "{out}/a_file/below"])
CHECKPOINT = st.sampled_from(["{ckpt}", "{ckpt}", "{out}/a_dir", "{out}/a_file", "/dev/null", "{out}/missing.safetensors",
                              "{out}/a_dir.json"])
JSON_LIST = st.sampled_from(['["ce"]', '["x"]', "x", "[]", '[0.1]', "[1e9]"])


def _choice(*values):
    return st.sampled_from(list(values))


CHECKPOINT_FLAGS = {"--checkpoint": CHECKPOINT, "--split": _choice("train", "test", "x"),
                    "--device": _choice("cpu", "auto", "cuda:7", "tpu", "x")}
BASE = ["--checkpoint", "{ckpt}", "--device", "cpu"]
# per command: (arguments that keep a valid run tiny, the flags fuzzed on top of them; later flags win)
COMMANDS = {
    "info": ([], {"--json": None}),
    "zoo-table": ([], {"": _choice("{out}", "{out}/a_file", "/dev/null", "{out}/missing", "{shipped}")}),
    "explain": (BASE + ["--indices", "0", "--out", "{out}/e"], {
        **CHECKPOINT_FLAGS, "--indices": INDICES, "--method": _choice("gradient", "integrated_gradients", "nope"),
        "--target": _choice("true", "predicted", "3", "99", "-1", "x"), "--normalize": _choice("sum", "none", "x"),
        "--out": OUT_DIR, "--n-steps": INT}),
    "attack-classifier": (BASE + ["--n-images", "2", "--steps", "1"], {
        **CHECKPOINT_FLAGS, "--n-images": INT, "--indices": INDICES, "--attack": _choice("pgd", "fgsm", "nope"),
        "--eps": FLOAT, "--steps": INT, "--restarts": INT, "--eps-list": _choice("0.1", "0.1,nan", "x", "0.01,0.02"),
        "--minimal-eps": FLOAT, "--json": OUT_FILE, "--csv": OUT_FILE, "--seed": INT}),
    "attack-explanation": (BASE + ["--indices", "0", "--attack", "ifia", "--k", "10", "--eval-k", "10", "--steps", "1",
                                   "--out", "{out}/a"], {
        **CHECKPOINT_FLAGS, "--indices": INDICES, "--target-indices": INDICES,
        "--attack": _choice("ifia", "targeted", "nope"), "--steps": INT, "--eps": FLOAT, "--out": OUT_DIR}),
    "sample": (["--way", "1", "--dataset", "digits", "--n-candidates", "40", "--n-pairs", "3"], {
        "--way": _choice("1", "2", "3", "4", "x"), "--dataset": _choice("digits", "nope", "../x"),
        "--split": _choice("train", "test", "x"), "--n-candidates": INT, "--n-pairs": INT, "--k": INT,
        "--feature-source": _choice("penultimate", "maps", "x"), "--seed": INT, "--out": OUT_FILE,
        "--reference": CHECKPOINT, "--device": _choice("cpu", "x")}),
    "landscape": (BASE + ["--indices", "0", "--points", "3", "--losses", '["ce"]'], {
        **CHECKPOINT_FLAGS, "--indices": INDICES, "--points": INT, "--dims": _choice("1", "2", "3"), "--radius": FLOAT,
        "--batch-size": INT, "--losses": JSON_LIST, "--loss": _choice("ce", "explanation", "x"),
        "--direction": _choice("random", "adversarial", "explanation", "x"), "--json": OUT_FILE,
        "--pairs": _choice("{pairs}", "{mnist_pairs}", "{out}/a_file", "/dev/null", "{out}/a_dir"), "--n-pairs": INT}),
    "curvature": (BASE + ["--indices", "0", "--n-samples", "1", "--iterations", "1"], {
        **CHECKPOINT_FLAGS, "--indices": INDICES, "--radius": FLOAT, "--beta": FLOAT,
        "--explainer": _choice("gradient_x_input", "deeplift", "x"), "--n-samples": INT, "--iterations": INT,
        "--seed": INT, "--json": OUT_FILE, "--pairs": _choice("{pairs}", "{out}/a_file")}),
    "compare-ways": (BASE + ["--ways", "1", "--seeds", "0,1", "--n-pairs", "2", "--n-candidates", "20", "--steps", "1",
                             "--reference-pairs", "0"], {
        **CHECKPOINT_FLAGS, "--ways": INDICES, "--seeds": INDICES, "--n-pairs": INT, "--n-candidates": INT,
        "--k": INT, "--steps": INT, "--json": OUT_FILE, "--reference": CHECKPOINT}),
    "ray-local": (["--runs", "{out}/runs", "status"], {"": _choice("status", "stop", "x")}),
    "replicate": (["sep"], {"--dataset": _choice("digits", "mnist5k", "x"), "--json": OUT_FILE,
                            "--markdown": OUT_FILE, "--update-readme": _choice("{out}/a_file", "/dev/null", "{out}/no"),
                            "--compute-missing": None, "--store-dir": OUT_DIR}),
    "zoo": (["import", "{out}/a_file", "--layout", "robustbench", "--arch", "wrn-10-1", "--dataset", "digits",
             "--name", "z"], {
        "--layout": _choice("robustbench", "trades", "madrylab", "torchvision:resnet18", "timm:x", "nope"),
        "--arch": _choice("wrn-28-10", "preact-resnet18", "resnet18", "wrn-0-0", "x"), "--name": TEXT,
        "--dataset": _choice("digits", "cifar10", "x"), "--mean": _choice("0.5", "0.1,0.2,0.3", "nan", "x"),
        "--std": _choice("0.5", "0", "-1", "x"), "--input-size": INT, "--zoo": OUT_DIR,
        "": _choice("{ckpt}", "{pairs}", "/dev/null", "{out}/a_dir")}),
    "train": (["--name", "f", "--dataset", "digits", "--epochs", "1", "--max-train-images", "32", "--eval-images", "8",
               "--eval-pgd-steps", "0", "--quiet", "--device", "cpu", "--out", "{out}/t"], {
        "--epochs": INT, "--batch-size": INT, "--lr": FLOAT, "--objective": _choice("natural", "nope"),
        "--name": TEXT, "--out": OUT_DIR, "--seed": INT, "--architecture": _choice("convnet", "nope"),
        "--max-train-images": INT}),
    "evaluate": (BASE + ["--n-images", "2", "--eps-list", "[0.1]", "--pgd-steps", "1", "--explanation-attack", "none",
                         "--n-explanation-images", "1", "--ifia-steps", "1", "--targeted-steps", "1"], {
        **CHECKPOINT_FLAGS, "--n-images": INT, "--preset": _choice("rar_mnist", "x"), "--eps-list": JSON_LIST,
        "--explanation-attack": _choice("ifia", "none", "x"), "--pgd-steps": INT, "--json": OUT_FILE,
        "--write-card": None, "--batch-size": INT}),
    "sweep": (["run", "--name", "s", "--grid", "lam=1,2", "--objective", "sep", "--dataset", "digits", "--epochs", "1",
               "--evaluation", '{"n_images": 2, "explanation_attack": "none"}'], {
        "--grid": _choice("lam=1,2", "lam=1e12", "foo=1", "lam", "lam=x", "sigma=0.1,0.2", "beta=1"),
        "--name": TEXT, "--max-parallel": INT, "--preset": _choice("sep_mnist", "x"), "--json": OUT_FILE,
        "--csv": OUT_FILE, "--figure": OUT_FILE, "--evaluation": _choice("{}", '{"n_images": -1}', "x", "[1]")}),
}
JOBS = {"submit": _choice("{out}/a_file", "/dev/null", "{spec}", "--epochs", "--name"), "list": None,
        "show": TEXT, "cancel": TEXT, "resume": TEXT, "retry": TEXT, "delete": TEXT, "logs": TEXT,
        "rebuild-store": None, "worker": TEXT}


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    """A shipped zoo (one tiny digits model), pair files and a job spec, outside every run's output folder."""
    from explrobust_core.sampling import PairSet, save_pairs
    from explrobust_core.zoo import ModelCard, build_from_card, save_checkpoint

    root = tmp_path_factory.mktemp("cli_fuzz")
    card = ModelCard(name="natural", architecture="convnet", arch_config={"width1": 4, "width2": 4, "hidden": 8},
                     dataset="digits", input_shape=(1, 8, 8), mean=[0.3], std=[0.4], classes=list("0123456789"))
    torch.manual_seed(0)
    save_checkpoint(build_from_card(card), card, root / "shipped" / "digits")
    save_pairs(PairSet(way=1, dataset="digits", n_candidates=20, pairs=[(0, 1), (2, 3)]), root / "pairs.json")
    save_pairs(PairSet(way=1, dataset="mnist5k", n_candidates=20, pairs=[(0, 1)]), root / "mnist_pairs.json")
    (root / "spec.json").write_text(json.dumps({"kind": "train", "train": {"name": "fz", "dataset": "digits"}}))
    return root


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if not p.is_relative_to(skip) and not p.is_symlink()}


_RUNS = iter(range(10**6))


def _run_cli_fuzzed(sandbox: Path, argv: list[str]) -> None:
    import contextlib
    import shutil
    import time

    from explrobust_core.cli import main

    out = sandbox / f"run{next(_RUNS)}"
    (out / "a_dir").mkdir(parents=True)
    (out / "a_file").write_text("x")
    for suffix in (".safetensors", ".json"):
        shutil.copy(sandbox / "shipped" / "digits" / f"natural{suffix}", out / f"ckpt{suffix}")
    places = {"out": out, "ckpt": out / "ckpt.safetensors", "shipped": sandbox / "shipped",
              "pairs": sandbox / "pairs.json", "mnist_pairs": sandbox / "mnist_pairs.json", "spec": sandbox / "spec.json"}
    for name, place in places.items():  # placeholders only: a fuzzed value may hold braces of its own
        argv = [a.replace("{" + name + "}", str(place)) for a in argv]
    before = _snapshot(sandbox, out)
    stderr = io.StringIO()
    env = {"EXPLROBUST_RUNS": str(out / "runs"), "EXPLROBUST_USER_ZOO": str(out / "user_zoo"),
           "EXPLROBUST_ZOO": str(sandbox / "shipped"), "EXPLROBUST_MAX_JOBS": "0"}  # no job worker ever starts
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr), \
            contextlib.redirect_stdout(io.StringIO()):
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr("explrobust_core.jobs.LocalExecutor.start_queued", lambda self: [])  # jobs queue, never run
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    seconds = time.perf_counter() - started
    err = stderr.getvalue()
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    assert _snapshot(sandbox, out) == before, f"{argv} wrote outside its output folder"
    assert seconds < CLI_SECONDS, (argv, seconds)


@st.composite
def fuzzed_argv(draw, command: str) -> list[str]:
    base, flags = COMMANDS[command]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)) if flags else []
    argv = [command, *base]
    for flag in chosen:
        if flags[flag] is None:  # a switch
            argv.append(flag)
        elif flag == "":  # a positional argument
            argv.append(draw(flags[flag]))
        else:
            argv += [flag, draw(flags[flag])]
    return argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_refuses_bad_values_in_one_line_and_writes_only_its_output(cli_sandbox, command):
    @CLI
    @given(argv=fuzzed_argv(command))
    def prop(argv):
        _run_cli_fuzzed(cli_sandbox, argv)

    prop()


@CLI
@given(action=st.sampled_from(sorted(JOBS)), data=st.data())
def test_every_jobs_command_refuses_bad_values_in_one_line(cli_sandbox, action, data):
    argv = ["jobs", "--runs", "{out}/runs", action]
    if JOBS[action] is not None:
        argv.append(data.draw(JOBS[action]))
    if action == "submit" and argv[-1].startswith("--"):  # the `train` flags: a value of any type
        argv += [data.draw(st.one_of(INT, TEXT)), "--dataset", "digits"]
    _run_cli_fuzzed(cli_sandbox, argv)


def test_the_cli_fuzz_covers_every_command():
    """A new command joins the fuzz above (an entry in COMMANDS, or JOBS for a jobs action)."""
    import argparse

    from explrobust_core.cli import build_parser

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(sub.choices)

    top = commands(build_parser())
    assert set(top) == set(COMMANDS) | {"jobs"}
    assert set(commands(top["jobs"])) == set(JOBS)
