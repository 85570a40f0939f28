"""Map post-processing, the explanation loss, map-vs-map comparisons and stability metrics.

Conventions (see DESIGN.md, "Conventions"):

* An *attribution* has the input's shape ``(N, C, H, W)``; a *map* is ``(N, H, W)``. Comparison
  metrics take maps; most accept any ``(N, ...)`` and flatten from dim 1.
* Everything is batched over images and returns one value per image, ``(N,)``, in the input's
  floating dtype. Exact statistics (ranks, pair counts, correlations) are accumulated in float64
  / int64 (float32 on MPS, which has no float64) and cast back at the end.
* Where a number is undefined (a correlation of a constant map, a cosine or a centre of mass of an
  all-zero map, a relative change of an all-zero explanation) the result is NaN, as scipy does;
  it is never NaN where the number is defined. Undefined cases use safe denominators, so the
  gradients of the *other* images in the batch stay finite.
* Map post-processing, :func:`explanation_loss`, :func:`mse`, :func:`cosine_similarity`,
  :func:`pearson`, :func:`center_of_mass` / :func:`center_of_mass_shift` and :func:`ssim` are
  differentiable in torch; the rank metrics (top-k, Kendall, Spearman) are not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import Field

from .registry import Config, Registry  # entries without options get NoConfig (the default)

__all__ = [
    "EXPLANATION_LOSS_UNIT",
    "COMPARISONS",
    "MetricInfo",
    "metric_label",
    "higher_is_robust",
    "TopKConfig",
    "attribution_to_map",
    "explanation_loss",
    "in_paper_units",
    "topk_intersection",
    "topk_mask",
    "kendall_tau",
    "spearman_rho",
    "pearson",
    "cosine_similarity",
    "mse",
    "center_of_mass",
    "center_of_mass_shift",
    "ssim",
    "compare_maps",
    "sensitivity",
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz",
]

Tensor = torch.Tensor

# The SEP paper reports the explanation loss in units of 1e-7.
EXPLANATION_LOSS_UNIT = 1e-7

# Memory cap of Kendall's tau: pixels (over all images) processed at a time; each takes a few
# int64 temporaries, so 4M pixels ≈ a few hundred MB at most (64 maps of 224×224 in one go).
KENDALL_MAX_ELEMENTS = 1 << 22
_KENDALL_CACHE_ELEMENTS = 1 << 18  # ≈ 2 MB per int64 temporary: 5 maps of 224×224 at a time


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype: float64, except on MPS which has none."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _flat_pair(a: Tensor, b: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Check two ``(N, ...)`` tensors of one shape and flatten them to ``(N, P)``."""
    if a.shape != b.shape:
        raise ValueError(f"{what}: the two maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"{what}: expected maps of shape (N, ...) with at least 2 dims, got {tuple(a.shape)}")
    if a.shape[1:].numel() == 0:
        raise ValueError(f"{what}: maps have no pixels: {tuple(a.shape)}")
    return a.flatten(1), b.flatten(1)


def _is_constant(v: Tensor) -> Tensor:
    """(N,) bool: every entry of a row equals the row's first entry (exact comparison)."""
    return (v == v[:, :1]).all(dim=1)


def _safe_div(num: Tensor, den: Tensor, undefined: Tensor) -> Tensor:
    """``num / den`` with NaN where ``undefined``; the masked denominator keeps gradients finite."""
    den = torch.where(undefined, torch.ones_like(den), den)
    out = num / den
    return torch.where(undefined, torch.full_like(out, float("nan")), out)


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of two ``(N, P)`` float tensors (NaN for a constant row)."""
    undefined = _is_constant(a) | _is_constant(b)
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    num = (ac * bc).sum(dim=1)
    var = (ac * ac).sum(dim=1) * (bc * bc).sum(dim=1)
    # sqrt of a masked (≥ 1) value: no inf gradient from sqrt(0) in the undefined rows
    den = torch.sqrt(torch.where(undefined, torch.ones_like(var), var))
    # rounding can leave |r| a hair above 1
    return _safe_div(num, den, undefined).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# map post-processing and the explanation loss
# --------------------------------------------------------------------------------------------


def attribution_to_map(attribution: Tensor, normalize: Literal["sum", "none"] = "sum") -> Tensor:
    """Attribution ``(N, C, H, W)`` → map ``(N, H, W)``: ``|attribution|`` summed over channels.

    ``normalize="sum"`` divides each map by its sum so that it sums to 1 (the Dombrowski / SEP
    convention); an all-zero map stays all zero (no NaN). ``"none"`` returns the channel sum.
    A ``(N, H, W)`` input is taken as a single-channel attribution. Differentiable (the gradient
    of ``|·|`` at exactly 0 is 0, torch's convention).
    """
    if attribution.dim() == 3:
        attribution = attribution.unsqueeze(1)
    if attribution.dim() != 4:
        raise ValueError(f"attribution must be (N, C, H, W) or (N, H, W), got {tuple(attribution.shape)}")
    m = attribution.abs().sum(dim=1)
    if normalize == "none":
        return m
    if normalize != "sum":
        raise ValueError(f"normalize must be 'sum' or 'none', got {normalize!r}")
    total = m.sum(dim=(1, 2), keepdim=True)
    # all-zero maps: divide by 1 instead of 0, so they stay zero
    return m / torch.where(total > 0, total, torch.ones_like(total))


def mse(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Mean over pixels of ``(map_a − map_b)²``, per image ``(N,)``. Differentiable."""
    a, b = _flat_pair(map_a, map_b, "mse")
    return (a - b).pow(2).mean(dim=1)


def explanation_loss(map_a: Tensor, map_b: Tensor) -> Tensor:
    """SEP explanation loss ``L_e = mean over pixels of (map_a − map_b)²``, per image ``(N,)``.

    SEP paper, Definition 1 as we read it: the maps are the sum-normalised maps of
    :func:`attribution_to_map`. Raw value; :func:`in_paper_units` gives the paper's ×10⁻⁷ units.
    Differentiable.

    Args:
        map_a, map_b: sum-normalised maps ``(N, H, W)``.

    Returns:
        ``L_e`` per image ``(N,)``.

    Example:
        >>> in_paper_units(explanation_loss(maps, target_maps))  # doctest: +SKIP
    """
    return mse(map_a, map_b)


def in_paper_units(value: Any) -> Any:
    """An explanation loss in the SEP paper's reporting units (``value / 1e-7``)."""
    return value / EXPLANATION_LOSS_UNIT


# --------------------------------------------------------------------------------------------
# comparisons between two maps
# --------------------------------------------------------------------------------------------

COMPARISONS: Registry[Callable[..., Tensor]] = Registry("comparison metric")


class TopKConfig(Config):
    k: int = Field(100, ge=1, le=1_000_000, description="Number of top pixels compared (RAR: 100; Flower 1000).")


# the direction of a metric, as a tag: compared with the original map, an attacked map that stays similar
# means a robust explanation, so a similarity is "higher is more robust" and a distance "lower is more robust"
_SIM = "similarity"  # higher = more similar
_DIST = "distance"  # higher = more different


@dataclass(frozen=True)
class MetricInfo:
    """What a comparison metric's entry carries besides its function (``Entry.meta``)."""

    label: str  # its name in tables, figures and the study


def metric_label(name: str) -> str:
    """The short human name of comparison metric ``name``."""
    meta = COMPARISONS.get(name).meta
    return meta.label if isinstance(meta, MetricInfo) else name


def higher_is_robust(name: str) -> bool:
    """Whether a higher value of metric ``name`` between an original and an attacked map means a more robust
    explanation (a similarity), or a lower one (a distance). The one place the direction is decided: its tag."""
    tags = COMPARISONS.get(name).tags
    if (_SIM in tags) == (_DIST in tags):
        raise ValueError(f"comparison metric {name!r} must be tagged either {_SIM!r} or {_DIST!r}")
    return _SIM in tags


@COMPARISONS.register(
    "topk_intersection",
    config=TopKConfig,
    tags=(_SIM, "rank"),
    meta=MetricInfo('top-k intersection'),
)
def topk_intersection(map_a: Tensor, map_b: Tensor, k: int = 100) -> Tensor:
    """Share of the k most important pixels common to both maps (RAR's 'IN'), in [0, 1].

    ``|top-k(a) ∩ top-k(b)| / k`` per image, in [0, 1] (RAR's "IN").

    Ties at the k-th value are broken deterministically by pixel index (lower flat index first,
    via a stable sort), where RAR's argsort breaks them arbitrarily.
    """
    a, b = _flat_pair(map_a, map_b, "topk_intersection")
    n = a.shape[1]
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"topk_intersection: k must be an integer in 1..{n} (the number of pixels), got {k!r}")
    k = int(k)
    common = (topk_mask(a.detach(), k) & topk_mask(b.detach(), k)).sum(dim=1)
    return (common.to(_acc_dtype(a)) / k).to(_out_dtype(map_a))


def topk_mask(v: Tensor, k: int) -> Tensor:
    """``(N, P)`` bool: the k largest entries of each row, ties at the k-th value taken lowest index
    first — the first k of a stable descending sort, found with ``topk`` (O(P log k)) instead."""
    if v.dtype == torch.bool:
        v = v.to(torch.uint8)  # topk has no bool kernel
    kth = v.topk(k, dim=1).values[:, -1:]
    above = v > kth
    tied = v == kth
    # of the entries equal to the k-th value, the first (k − #above) by position
    room = k - above.sum(dim=1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=1) <= room))


def _sort_rows(keys: Tensor) -> Tensor:
    """The rows of an int64 ``(N, P)`` tensor sorted ascending (values only). On the CPU numpy's
    SIMD sort is about ten times torch's, which always builds an index too."""
    if keys.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sort(keys.numpy(), axis=1))
    return torch.sort(keys, dim=1).values


def _pairs_in_runs(sorted_keys: Tensor) -> tuple[Tensor, Tensor]:
    """For sorted rows: per element the start index of its run of equal values, and per row the
    number of tied pairs ``Σ t(t − 1)/2`` over runs (each element pairs with those before it in its run)."""
    n, p = sorted_keys.shape
    idx = torch.arange(p, device=sorted_keys.device).expand(n, p)
    new_run = torch.ones_like(sorted_keys, dtype=torch.bool)
    new_run[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    start = torch.where(new_run, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return start, (idx - start).sum(dim=1)


def _ordered_int32_keys(v: Tensor) -> Tensor | None:
    """int64 keys in [−2³¹, 2³¹) ordered and tied exactly as ``v``'s values, or None if ``v``'s dtype
    does not fit 32 bits. Floats: the IEEE bit pattern, negatives mirrored so integer order is
    numeric order (−0.0 is folded into +0.0 first, since they compare equal)."""
    if v.dtype in (torch.float16, torch.bfloat16, torch.float32):
        bits = (v.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
        return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    if v.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32):
        return v.to(torch.int64)
    return None


def _sorted_with_permutation(v: Tensor, keys: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per row: the values (or their ``keys`` from :func:`_ordered_int32_keys`) sorted ascending, and the
    permutation (sorted position → index), equal values in index order."""
    if keys is None:
        return torch.sort(v, dim=1, stable=True)
    # pack (value, index) into one int64 so that a values-only sort also yields the permutation
    packed = _sort_rows((keys << 32) | torch.arange(v.shape[1], dtype=torch.int64))
    return packed >> 32, packed & 0xFFFFFFFF


def _lower_ranks(v: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the number of entries strictly smaller than each entry (equal values share it) and
    the number of tied pairs. One sort per row."""
    sorted_keys, perm = _sorted_with_permutation(v, _ordered_int32_keys(v) if v.device.type == "cpu" else None)
    start, tied = _pairs_in_runs(sorted_keys)
    return torch.empty_like(start).scatter_(1, perm, start), tied


def _strict_inversions(values: Tensor, bits: int) -> Tensor:
    """Per row, the pairs ``i < j`` with ``values[i] > values[j]`` (ints in [0, 2^bits)): a bottom-up
    merge sort, O(P log P) per level run as one sort of packed keys.

    Level ``l`` pairs blocks of ``w = 2^l`` positions (left, right); a key ``(block pair, value,
    side)`` sorts each pair of blocks by value with the left block first among equals, so the
    right-side entries ahead of a left-side one are exactly its smaller partners. Their total is
    ``Σ_j side_j (P − j) − c_l``, where ``c_l`` depends on P and l only (it is the same sum for an
    already sorted row, which has no inversions). The next level's keys come from this level's
    sorted keys (the pair index halves, its low bit becomes the side) and are again long ascending
    runs, which numpy's stable (run-merging) sort handles in little more than one pass.
    """
    if values.device.type == "cpu":
        return _strict_inversions_numpy(values, bits)
    return _strict_inversions_torch(values, bits)


@functools.lru_cache(maxsize=32)
def _level_offsets(p: int, levels: int) -> tuple[int, ...]:
    """``c_l`` of :func:`_strict_inversions`: ``Σ_j side_j (P − j)`` for a row without inversions."""
    pos = torch.arange(p, dtype=torch.int64)
    return tuple(int((((pos >> level) & 1) * (p - pos)).sum()) for level in range(levels))


def _first_level_keys(values: Tensor, bits: int) -> Tensor:
    pos = torch.arange(values.shape[1], device=values.device, dtype=torch.int64)
    return ((pos >> 1) << (bits + 1)) | (values << 1) | (pos & 1)


def _strict_inversions_numpy(values: Tensor, bits: int) -> Tensor:
    # the CPU path: numpy's SIMD and run-merging sorts, in-place bit operations on cache-sized rows;
    # keys of up to 32 bits (maps of up to 2^16 pixels) go in uint32, half the memory traffic
    import numpy as np

    n, p = values.shape
    levels = max(0, (p - 1).bit_length())
    narrow = 2 * bits <= 32  # the largest key is (pair < 2^(bits−1), value < 2^bits, side): 2·bits bits
    dtype = np.uint32 if narrow else np.int64
    # Σ_j side_j (P − j) ≤ P(P + 1)/2 < 2^32 for P ≤ 2^16: exact in uint32 too
    weight = np.arange(p, 0, -1, dtype=dtype)
    value_bits = dtype(((1 << bits) - 1) << 1)
    offsets = _level_offsets(p, levels)
    inversions = np.zeros(n, dtype=np.int64)
    keys = _first_level_keys(values, bits).numpy().astype(dtype)
    keys.sort(axis=1)
    side, pair = np.empty_like(keys), np.empty_like(keys)
    one, shift = dtype(1), dtype(bits + 1)
    for level in range(levels):
        if level:
            np.right_shift(keys, shift, out=pair)
            np.bitwise_and(keys, value_bits, out=keys)
            np.bitwise_and(pair, one, out=side)
            np.bitwise_or(keys, side, out=keys)
            np.right_shift(pair, one, out=pair)
            np.left_shift(pair, shift, out=pair)
            np.bitwise_or(keys, pair, out=keys)
            keys.sort(axis=1, kind="stable")
        np.bitwise_and(keys, one, out=side)
        inversions += (side @ weight).astype(np.int64) - offsets[level]
    return torch.from_numpy(inversions)


def _strict_inversions_torch(values: Tensor, bits: int) -> Tensor:
    # the same algorithm in torch, for accelerators (and tested on the CPU)
    n, p = values.shape
    levels = max(0, (p - 1).bit_length())
    weight = torch.arange(p, 0, -1, device=values.device, dtype=torch.int64)
    value_bits = ((1 << bits) - 1) << 1
    offsets = torch.tensor(_level_offsets(p, levels), dtype=torch.int64).to(values.device)
    inversions = torch.zeros(n, dtype=torch.int64, device=values.device)
    keys = torch.sort(_first_level_keys(values, bits), dim=1).values
    for level in range(levels):
        if level:
            pair = keys >> (bits + 1)
            keys = torch.sort(((pair >> 1) << (bits + 1)) | (keys & value_bits) | (pair & 1), dim=1).values
        inversions += ((keys & 1) * weight).sum(dim=1) - offsets[level]
    return inversions


@COMPARISONS.register(
    "kendall_tau",
    tags=(_SIM, "rank", "correlation"),
    meta=MetricInfo('Kendall τ'),
)
def kendall_tau(map_a: Tensor, map_b: Tensor, max_elements: int = KENDALL_MAX_ELEMENTS) -> Tensor:
    """Kendall's tau-b over all pixels, ties handled as scipy.stats.kendalltau (RAR's 'CO').

    Kendall's τ-b per image, equal to ``scipy.stats.kendalltau`` (variant 'b').

    ``τ_b = (n0 − n1 − n2 + n3 − 2·D) / sqrt((n0 − n1)(n0 − n2))`` (Knight, 1966): n0 all pairs,
    n1 / n2 the pairs tied in a / in b, n3 the pairs tied in both and D the discordant pairs,
    counted as the strict inversions of b once the pixels are ordered by (a, b). O(P log P) per
    image, exact integer counts (int64); images are processed ``max_elements`` pixels at a time
    (a memory cap only). NaN where a map is constant (the denominator is 0) or has a NaN, as scipy.
    """
    _flat_pair(map_a, map_b, "kendall_tau")
    return _KendallReference(map_a, max_elements)(map_b)


class _KendallReference:
    """τ-b of one fixed map ``map_a`` ``(N, ...)`` against others of its shape: its ranks and ties, per chunk of
    rows, are computed once (an explanation attack scores every step's maps against the original's)."""

    def __init__(self, map_a: Tensor, max_elements: int = KENDALL_MAX_ELEMENTS):
        if max_elements < 1:
            raise ValueError("kendall_tau: max_elements must be ≥ 1")
        a, _ = _flat_pair(map_a, map_a, "kendall_tau")
        self.a, self.shape, self.out_dtype = a.detach(), map_a.shape, _out_dtype(map_a)
        n_img, p = self.a.shape
        if p >= 1 << 31:
            raise ValueError(f"kendall_tau: maps of {p} pixels are beyond the 2^31 the exact count supports")
        # rows at a time: within the memory cap, and few enough that the temporaries stay in cache
        chunk = max(1, min(max_elements, _KENDALL_CACHE_ELEMENTS) // p)
        self.rows = [slice(i0, i0 + chunk) for i0 in range(0, n_img, chunk)]
        self.ranks = [_lower_ranks(self.a[rows]) for rows in self.rows]
        self.has_nan = [self.a[rows].isnan().any(dim=1) if self.a.is_floating_point() else None for rows in self.rows]

    def __call__(self, map_b: Tensor) -> Tensor:
        if map_b.shape != self.shape:
            raise ValueError(f"kendall_tau: the two maps differ in shape: {tuple(self.shape)} vs {tuple(map_b.shape)}")
        b, p = map_b.detach().flatten(1), self.a.shape[1]
        bits = max(1, (p - 1).bit_length())
        acc = _acc_dtype(self.a)
        parts = []
        for rows, (rank_a, tied_a), nan_a in zip(self.rows, self.ranks, self.has_nan):
            bi = b[rows]
            rank_b, tied_b = _lower_ranks(bi)
            lex = _sort_rows((rank_a << bits) | rank_b)  # pixels ordered by a, ties in a by b
            _, tied_both = _pairs_in_runs(lex)
            discordant = _strict_inversions(lex & ((1 << bits) - 1), bits)
            n0 = p * (p - 1) // 2
            num = (n0 - tied_a - tied_b + tied_both - 2 * discordant).to(acc)
            den_sq = (n0 - tied_a).to(acc) * (n0 - tied_b).to(acc)
            undefined = den_sq == 0
            if nan_a is not None:
                undefined = undefined | nan_a | bi.isnan().any(dim=1)
            den = torch.sqrt(torch.where(undefined, torch.ones_like(den_sq), den_sq))
            parts.append(_safe_div(num, den, undefined).clamp(-1.0, 1.0))
        return torch.cat(parts).to(self.out_dtype)


def comparison_against(name: str, reference: Tensor, **options) -> Callable[[Tensor], Tensor]:
    """``lambda maps: COMPARISONS[name](reference, maps, **options)``, for scoring many maps against one:
    what depends on ``reference`` alone is computed once where the comparison allows it (Kendall's τ: its
    ranks). The same values as calling the comparison each time."""
    if name == "kendall_tau":
        return _KendallReference(reference, **options)
    fn = COMPARISONS.get(name).obj
    return lambda maps: fn(reference, maps, **options)


def average_ranks(v: Tensor) -> Tensor:
    """1-based ranks of each row of ``(N, P)``, ties given their average rank (scipy's 'average'); the one
    ranking of the project (the study's Spearman over models uses it too)."""
    keys = _ordered_int32_keys(v) if v.device.type == "cpu" else None
    if keys is not None and not (v.is_floating_point() and v.isnan().any()):
        # the CPU path: one packed numpy sort, the tied runs read off the sorted rows (a torch sort and two
        # searchsorted took 8.0 ms against 0.6 ms on 64 maps of 28×28, one thread)
        sorted_keys, perm = _sorted_with_permutation(v, keys)
        lo, _ = _pairs_in_runs(sorted_keys)  # per sorted position: the number of values below it
        idx = torch.arange(v.shape[1], dtype=torch.int64).expand_as(sorted_keys)
        last = torch.ones_like(sorted_keys, dtype=torch.bool)
        last[:, :-1] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
        # the number of values at or below it: the end of its run, the first run end from it on
        hi = torch.where(last, idx + 1, v.shape[1]).flip(1).cummin(dim=1).values.flip(1)
        ranks = (lo + hi + 1).to(_acc_dtype(v)) / 2
        return torch.empty_like(ranks).scatter_(1, perm, ranks)
    sorted_v = torch.sort(v, dim=1).values
    v = v.contiguous()
    lo = torch.searchsorted(sorted_v, v, right=False)  # number of values < v
    hi = torch.searchsorted(sorted_v, v, right=True)  # number of values ≤ v
    # ranks lo+1 .. hi are tied: their mean is (lo + 1 + hi) / 2
    return (lo + hi + 1).to(_acc_dtype(v)) / 2


@COMPARISONS.register(
    "spearman_rho",
    tags=(_SIM, "rank", "correlation"),
    meta=MetricInfo('Spearman ρ of maps'),
)
def spearman_rho(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Spearman's rho over all pixels (Pearson on average ranks), as scipy.stats.spearmanr.

    Spearman's ρ per image: Pearson correlation of average ranks (ties get their mean rank),
    equal to ``scipy.stats.spearmanr``. NaN where a map is constant or has a NaN, as scipy."""
    a, b = _flat_pair(map_a, map_b, "spearman_rho")
    a, b = a.detach(), b.detach()
    rho = _pearson_rows(average_ranks(a), average_ranks(b))
    if a.is_floating_point() or b.is_floating_point():  # a NaN has no rank: scipy's 'propagate'
        rho = torch.where(a.isnan().any(dim=1) | b.isnan().any(dim=1), torch.full_like(rho, float("nan")), rho)
    return rho.to(_out_dtype(map_a))


@COMPARISONS.register(
    "pearson",
    tags=(_SIM, "correlation", "differentiable"),
    meta=MetricInfo('Pearson r of maps'),
)
def pearson(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Pearson correlation over all pixels, in [-1, 1].

    Pearson correlation per image over the flattened maps. NaN where a map is constant
    (as ``scipy.stats.pearsonr``). Differentiable."""
    a, b = _flat_pair(map_a, map_b, "pearson")
    acc = _acc_dtype(a)
    return _pearson_rows(a.to(acc), b.to(acc)).to(_out_dtype(map_a))


@COMPARISONS.register(
    "cosine_similarity",
    tags=(_SIM, "differentiable"),
    meta=MetricInfo('cosine similarity'),
)
def cosine_similarity(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Cosine of the angle between the flattened maps, in [-1, 1].

    ``<a, b> / (‖a‖ ‖b‖)`` per image over the flattened maps. NaN where a map is all zero
    (undefined; torch's ``F.cosine_similarity`` would return 0 through its eps). Differentiable."""
    a, b = _flat_pair(map_a, map_b, "cosine_similarity")
    acc = _acc_dtype(a)
    a, b = a.to(acc), b.to(acc)
    undefined = (a == 0).all(dim=1) | (b == 0).all(dim=1)
    sq = (a * a).sum(dim=1) * (b * b).sum(dim=1)
    den = torch.sqrt(torch.where(undefined, torch.ones_like(sq), sq))
    cos = _safe_div((a * b).sum(dim=1), den, undefined).clamp(-1.0, 1.0)
    return cos.to(_out_dtype(map_a))


COMPARISONS.add(
    "mse",
    mse,
    summary="Mean squared difference over pixels (on sum-normalised maps: the SEP explanation loss).",
    tags=(_DIST, "differentiable"),
    meta=MetricInfo('mean squared difference'),
)


def center_of_mass(map_: Tensor) -> Tensor:
    """Centre of mass ``(row, col)`` of each map ``(N, H, W)`` → ``(N, 2)``.

    Pixel coordinates: 0-based indices of pixel centres, row 0 at the top. The weights are the
    map's values (assumed non-negative). NaN for an all-zero map (no mass). Differentiable.
    """
    if map_.dim() != 3:
        raise ValueError(f"center_of_mass: expected a map (N, H, W), got {tuple(map_.shape)}")
    _, h, w = map_.shape
    rows = torch.arange(h, device=map_.device, dtype=_out_dtype(map_))
    cols = torch.arange(w, device=map_.device, dtype=_out_dtype(map_))
    m = map_.to(_out_dtype(map_))
    mass = m.sum(dim=(1, 2))
    num = torch.stack([(m.sum(dim=2) * rows).sum(dim=1), (m.sum(dim=1) * cols).sum(dim=1)], dim=1)
    undefined = (mass == 0)[:, None].expand_as(num)
    return _safe_div(num, mass[:, None].expand_as(num), undefined)


@COMPARISONS.register(
    "center_of_mass_shift",
    tags=(_DIST, "differentiable"),
    meta=MetricInfo('centre-of-mass shift (px)'),
)
def center_of_mass_shift(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Euclidean distance in pixels between the two maps' centres of mass.

    ``‖com(a) − com(b)‖₂`` in pixels per image (see :func:`center_of_mass`; NaN if a map is
    all zero). Unlike RAR's attack criterion the centres are not truncated to integers.
    Differentiable."""
    if map_a.shape != map_b.shape:
        raise ValueError(f"center_of_mass_shift: shapes differ: {tuple(map_a.shape)} vs {tuple(map_b.shape)}")
    return torch.linalg.vector_norm(center_of_mass(map_a) - center_of_mass(map_b), dim=1)


def _ssim_window(h: int, w: int) -> int:
    """min(11, largest odd ≤ min(H, W)): the window must be odd and fit the reflect padding."""
    side = min(h, w)
    return min(11, side if side % 2 == 1 else side - 1)


@COMPARISONS.register(
    "ssim",
    tags=(_SIM, "differentiable"),
    meta=MetricInfo('SSIM'),
)
def ssim(map_a: Tensor, map_b: Tensor) -> Tensor:
    """Structural similarity of the two maps, each scaled to max 1, averaged over pixels.

    Mean SSIM per image via ``kornia.metrics.ssim``.

    Maps ``(N, H, W)`` (or ``(N, C, H, W)``) are each divided by their own max (data range 1; a
    map whose max is ≤ 0 is left as is), Gaussian window (σ 1.5) of size min(11, largest odd ≤
    min(H, W)), reflect padding, ``eps=0`` so that identical maps score exactly 1.
    Differentiable.
    """
    if map_a.shape != map_b.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(map_a.shape)} vs {tuple(map_b.shape)}")
    if map_a.dim() == 3:
        map_a, map_b = map_a.unsqueeze(1), map_b.unsqueeze(1)
    if map_a.dim() != 4:
        raise ValueError(f"ssim: expected maps (N, H, W) or (N, C, H, W), got {tuple(map_a.shape)}")
    from kornia.metrics import ssim as _kornia_ssim  # imported here: kornia is slow to import

    def scaled(m: Tensor) -> Tensor:
        mx = m.amax(dim=(1, 2, 3), keepdim=True)
        return m / torch.where(mx > 0, mx, torch.ones_like(mx))

    window = _ssim_window(map_a.shape[-2], map_a.shape[-1])
    smap = _kornia_ssim(scaled(map_a), scaled(map_b), window, max_val=1.0, eps=0.0)
    return smap.flatten(1).mean(dim=1)


def compare_maps(name: str, map_a: Tensor, map_b: Tensor, **config: Any) -> Tensor:
    """Run the comparison metric ``name`` of :data:`COMPARISONS` with a validated config.

    Unknown names raise ``UnknownNameError``, bad options ``ConfigError`` (from the registry).

    Args:
        name: a comparison metric (``topk_intersection``, ``kendall_tau``, ``spearman_rho``, ``ssim``, …).
        map_a, map_b: maps ``(N, H, W)``; config: the metric's options (e.g. ``k``).

    Returns:
        One value per image ``(N,)``.

    Example:
        >>> compare_maps("topk_intersection", maps, attacked_maps, k=100)  # doctest: +SKIP
    """
    entry = COMPARISONS.get(name)
    cfg = entry.make_config(config)
    return entry.obj(map_a, map_b, **cfg.model_dump())


# --------------------------------------------------------------------------------------------
# stability under input perturbations
# --------------------------------------------------------------------------------------------

ExplainFn = Callable[..., Tensor]
_Sampler = Callable[[tuple[int, ...], "torch.Generator | None", torch.device, torch.dtype], Tensor]


def _uniform_linf(radius: float) -> _Sampler:
    def sample(shape, gen, device, dtype):
        u = torch.rand(shape, generator=gen, device=device, dtype=dtype)
        return (2 * u - 1) * radius

    return sample


def _gaussian(std: float) -> _Sampler:
    def sample(shape, gen, device, dtype):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype) * std

    return sample


def _resolve_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        # a CPU generator: the same seed gives the same perturbations on every device
        return torch.Generator().manual_seed(int(seed))
    return generator


def _call(explain_fn: ExplainFn, x: Tensor, targets: Tensor | None) -> Tensor:
    e = explain_fn(x) if targets is None else explain_fn(x, targets)
    if not isinstance(e, Tensor) or e.dim() < 1 or e.shape[0] != x.shape[0]:
        shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(f"explain_fn must return a tensor (N, ...) with N = {x.shape[0]}, got {shape}")
    return e.detach()


def _stability_core(
    explain_fn: ExplainFn,
    x: Tensor,
    *,
    sampler: _Sampler,
    n_samples: int,
    perturbations: Tensor | None = None,
    targets: Tensor | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[Tensor, Tensor, Tensor]:
    """Explain x and its N×S perturbations in chunks of ``batch_size`` rows (the sampling options of
    :func:`sensitivity` and :func:`local_lipschitz`, with their defaults).

    Rows are image-major (row ``i·S + s`` is sample s of image i). Perturbed inputs are
    ``clamp(x + δ)``. Returns, in the accumulation dtype, ``diff (N, S) = ‖e(x') − e(x)‖₂``,
    ``step (N, S) = ‖x' − x‖₂`` (the effective step, after clamping) and ``ref (N,) = ‖e(x)‖₂``,
    all norms over the flattened tensors (Frobenius).
    """
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ...), got {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    n_img = x.shape[0]
    if perturbations is not None:
        if perturbations.dim() != x.dim() + 1 or perturbations.shape[0] != n_img or perturbations.shape[2:] != x.shape[1:]:
            raise ValueError(
                f"perturbations must be (N, S, *x.shape[1:]) = ({n_img}, S, {', '.join(map(str, x.shape[1:]))}), "
                f"got {tuple(perturbations.shape)}"
            )
        n_samples = perturbations.shape[1]
        flat_pert = perturbations.reshape(n_img * n_samples, *x.shape[1:])
    elif n_samples < 1:
        raise ValueError("n_samples must be ≥ 1")
    if targets is not None and targets.shape[0] != n_img:
        raise ValueError(f"targets must have one entry per image ({n_img}), got {tuple(targets.shape)}")
    if targets is not None:
        targets = targets.to(x.device)  # indexed with row indices that live on x's device
    gen = _resolve_generator(generator, seed)
    noise_device = gen.device if gen is not None else x.device
    acc = _acc_dtype(x)

    # reference explanations, in chunks
    ref_parts = []
    for i0 in range(0, n_img, batch_size):
        sl = slice(i0, i0 + batch_size)
        ref_parts.append(_call(explain_fn, x[sl], None if targets is None else targets[sl]))
    e_ref = torch.cat(ref_parts)

    n_rows = n_img * n_samples
    diff = torch.empty(n_rows, dtype=acc, device=x.device)
    step = torch.empty(n_rows, dtype=acc, device=x.device)
    for r0 in range(0, n_rows, batch_size):
        r1 = min(n_rows, r0 + batch_size)
        img = torch.arange(r0, r1, device=x.device) // n_samples
        x_rows = x[img]
        if perturbations is not None:
            delta = flat_pert[r0:r1].to(device=x.device, dtype=x.dtype)
        else:
            delta = sampler((r1 - r0, *x.shape[1:]), gen, noise_device, x.dtype).to(x.device)
        x_pert = x_rows + delta
        if clamp is not None:
            x_pert = x_pert.clamp(clamp[0], clamp[1])
        e_pert = _call(explain_fn, x_pert, None if targets is None else targets[img])
        if e_pert.shape[1:] != e_ref.shape[1:]:
            raise ValueError(f"explain_fn returned {tuple(e_pert.shape[1:])} per row, expected {tuple(e_ref.shape[1:])}")
        diff[r0:r1] = torch.linalg.vector_norm((e_pert.to(acc) - e_ref[img].to(acc)).flatten(1), dim=1)
        step[r0:r1] = torch.linalg.vector_norm((x_pert.to(acc) - x_rows.to(acc)).flatten(1), dim=1)
    ref = torch.linalg.vector_norm(e_ref.to(acc).flatten(1), dim=1)
    return diff.view(n_img, n_samples), step.view(n_img, n_samples), ref


def sensitivity(
    explain_fn: ExplainFn,
    x: Tensor,
    radius: float = 0.02,
    n_samples: int = 10,
    *,
    reduce: Literal["max", "mean"] = "max",
    relative: bool = True,
    **sampling: Any,
) -> Tensor:
    """Max-sensitivity per image, ``max_s ‖e(x + δ_s) − e(x)‖_F / ‖e(x)‖_F``, ``(N,)`` (``reduce="mean"``: the
    average sensitivity, the mean over the samples).

    δ_s uniform in the L∞ ball of ``radius``; perturbed inputs clamped to ``clamp`` ([0, 1]; None
    to skip). ``relative=True`` divides by ‖e(x)‖_F (Quantus' default normalisation; NaN where
    e(x) is all zero); ``relative=False`` is captum's absolute ``sensitivity_max``.

    ``explain_fn(x)`` returns an attribution or a map ``(N, ...)``. The keyword sampling options (here and in
    :func:`local_lipschitz`): ``targets`` (N,): ``explain_fn`` is called as ``explain_fn(x_chunk, targets_chunk)``
    with the targets repeated per sample; ``batch_size`` (64): the N×S perturbed inputs are explained in chunks
    of it; ``perturbations`` ``(N, S, *x.shape[1:])`` replaces the random δ (and ``n_samples``); ``generator``
    or ``seed`` (a CPU generator, so the same on every device; else torch's global RNG): the draws are made
    per chunk, so results are reproducible for a fixed seed and ``batch_size``; ``clamp`` ((0, 1)).
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    if radius < 0:
        raise ValueError("radius must be ≥ 0")
    diff, _, ref = _stability_core(explain_fn, x, sampler=_uniform_linf(radius), n_samples=n_samples, **sampling)
    if relative:
        undefined = (ref == 0)[:, None].expand_as(diff)
        diff = _safe_div(diff, ref[:, None].expand_as(diff), undefined)
    out = diff.amax(dim=1) if reduce == "max" else diff.mean(dim=1)
    return out.to(_out_dtype(x))


def max_sensitivity(explain_fn: ExplainFn, x: Tensor, radius: float = 0.02, n_samples: int = 10, **options) -> Tensor:
    """Max-sensitivity per image: :func:`sensitivity` (whose keyword options it takes) with the maximum over samples."""
    return sensitivity(explain_fn, x, radius, n_samples, reduce="max", **options)


def avg_sensitivity(explain_fn: ExplainFn, x: Tensor, radius: float = 0.02, n_samples: int = 10, **options) -> Tensor:
    """Average sensitivity per image: :func:`sensitivity` (whose keyword options it takes) with the mean over samples."""
    return sensitivity(explain_fn, x, radius, n_samples, reduce="mean", **options)


def local_lipschitz(
    explain_fn: ExplainFn,
    x: Tensor,
    std: float = 0.1,
    n_samples: int = 10,
    **sampling: Any,
) -> Tensor:
    """Local Lipschitz estimate per image: ``max_s ‖e(x) − e(x')‖₂ / ‖x − x'‖₂``, ``(N,)``
    (Alvarez-Melis & Jaakkola, 2018), with ``x' = clamp(x + δ_s)``, δ_s ~ N(0, std²).

    The denominator is the *effective* step ‖x' − x‖₂ after clamping; samples whose effective
    step is 0 are skipped (NaN only if every sample is). The keyword sampling options (``targets``,
    ``batch_size``, ``perturbations``, ``generator``, ``seed``, ``clamp``) as :func:`sensitivity`'s.
    """
    if std < 0:
        raise ValueError("std must be ≥ 0")
    diff, step, _ = _stability_core(explain_fn, x, sampler=_gaussian(std), n_samples=n_samples, **sampling)
    ratio = _safe_div(diff, step, step == 0)
    # max over the defined samples; all undefined → NaN
    best = torch.where(torch.isnan(ratio), torch.full_like(ratio, float("-inf")), ratio).amax(dim=1)
    best = torch.where(torch.isinf(best) & (best < 0), torch.full_like(best, float("nan")), best)
    return best.to(_out_dtype(x))
