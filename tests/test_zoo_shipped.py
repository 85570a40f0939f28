"""The shipped zoo: every checkpoint loads and is measured; the headline contrasts hold.

These read the committed cards (models_zoo/mnist5k), so they fail if a rebuild ships broken
weights, unmeasured cards, or numbers that no longer show what README claims.
"""

from pathlib import Path

import pytest

from explrobust_core.sampling import load_pairs
from explrobust_core.zoo import list_checkpoints, load_checkpoint, shipped_zoo_dir

ZOO = shipped_zoo_dir() / "mnist5k"
EXPECTED = {"natural", "pgd_at", "trades_b1", "trades_b3", "trades_b6", "sep_pos", "sep_neg", "ig_norm", "art"}


@pytest.fixture(scope="module")
def cards():
    entries = list_checkpoints(ZOO)
    assert all(e.error is None for e in entries), [e.error for e in entries if e.error]
    return {e.card.name: e.card for e in entries}


def summary(card):
    return card.metrics["evaluation"]["summary"]


def pgd(card, eps):
    return {round(r["eps"], 4): r["accuracy"] for r in summary(card)["pgd_accuracy"]}[eps]


def test_every_model_is_shipped_small_loadable_and_measured(cards):
    assert EXPECTED <= set(cards)
    for name in EXPECTED:
        weights = ZOO / f"{name}.safetensors"
        assert weights.stat().st_size <= 5 * 2**20
        model, card = load_checkpoint(weights, "cpu")  # checksum and architecture verified
        assert card.command.startswith("explrobust train") and card.wall_time_s > 0
        assert card.metrics["evaluation"]["command"].startswith("explrobust evaluate")
        assert summary(card)["n_images"] == 1000


def test_pairs_file_is_the_one_the_cards_were_measured_on(cards):
    pairs = load_pairs(ZOO / "pairs_way3.json", dataset_size=1000)
    assert pairs.way == 3 and len(pairs.pairs) == 150 and pairs.reference.startswith("natural")
    for card in cards.values():
        assert summary(card)["pairs"]["way"] == 3


def test_adversarial_training_is_what_makes_models_robust(cards):
    assert pgd(cards["natural"], 0.3) <= 0.05
    for name in ("pgd_at", "trades_b6", "sep_pos", "sep_neg", "ig_norm"):
        assert pgd(cards[name], 0.3) >= pgd(cards["natural"], 0.3) + 0.3, name


def test_trades_sweep_is_ordered_in_robustness(cards):
    acc = [pgd(cards[f"trades_b{b}"], 0.3) for b in (1, 3, 6)]
    assert acc == sorted(acc) and acc[-1] - acc[0] > 0.02


def test_sep_pos_and_sep_neg_contrast_as_measured(cards):
    """README reports these numbers: SEP_pos, MAT and SEP_neg at the same clean and adversarial accuracy,
    explanation robustness ordered SEP_neg > MAT > SEP_pos as in the paper, but SEP_neg / SEP_pos below the
    paper's 2× (a negative result at our budget: if a rebuild reaches 2×, README's claim must change)."""
    pos, mat, neg = cards["sep_pos"], cards["pgd_at"], cards["sep_neg"]
    assert neg.objective_config["space"] == "model" and pos.objective_config["space"] == "pixel"
    for card in (pos, mat, neg):
        assert summary(card)["clean_accuracy"] >= 0.95
        assert abs(pgd(card, 0.3) - pgd(mat, 0.3)) <= 0.05
    le = lambda c: summary(c)["explanation"]["explanation_loss_end_paper"]["mean"]  # noqa: E731
    assert le(neg) > le(mat) > le(pos)
    assert 1.2 < le(neg) / le(pos) < 2


def test_the_regime_search_is_shipped_with_its_data():
    from explrobust_core.sweep import shipped_sweep

    table = shipped_sweep("mnist5k")
    rows = {r["model"]: r for r in table["rows"]}
    assert {"neg_m3k", "pos_50k", "ref_pgd_at"} <= set(rows) and "first 500" in table["note"].lower()
    # the shipped SEP_neg is the sweep's λ = −3000 point (same recipe, same weights)
    assert rows["neg_m3k"]["lam"] == -3000.0 and rows["neg_m3k"]["space"] == "model"
