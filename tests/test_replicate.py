"""Replication verdicts on synthetic numbers, and the report on the shipped zoo's stored evaluations."""

import json

import numpy as np
import pytest

from explrobust_core import replicate as rep


def _row(name, method, pgd, le_end, le_start=None, beta=None, objective=None):
    return {"model": f"d/{name}", "name": name, "method": method, "pgd_accuracy": pgd, "le_end": le_end,
            "le_start": le_start if le_start is not None else 1.3 * le_end, "status": "ok",
            "objective": objective or {"TRADES": "trades", "Normal": "natural"}.get(method, "x"), "beta": beta,
            "architecture": "convnet", "epochs": 5}


def _table(level, n=60, seed=0):
    rng = np.random.default_rng(seed)
    return {(i, i + 1): float(level * rng.uniform(0.9, 1.1)) for i in range(n)}


@pytest.mark.parametrize("neg_level, gap, verdict", [
    (300.0, 0.01, "reproduced"),       # 3× at the same accuracy
    (140.0, 0.01, "direction only"),   # 1.4×
    (90.0, 0.01, "not reproduced"),    # reversed
    (300.0, 0.20, "not reproduced"),   # 3× but 20 points of adversarial accuracy apart
])
def test_sep_decoupling_verdicts(neg_level, gap, verdict):
    rows = [_row("sep_pos", "SEP_pos", 0.80, 100.0), _row("sep_neg", "SEP_neg", 0.80 + gap, neg_level)]
    tables = {"d/sep_pos": _table(100.0, seed=1), "d/sep_neg": _table(neg_level, seed=2)}
    c = rep.claim_sep_decoupling(rows, tables)
    assert c.verdict == verdict
    assert c.numbers["ratio"]["ci_low"] <= c.numbers["ratio"]["ratio"] <= c.numbers["ratio"]["ci_high"]


def test_models_are_compared_on_common_pairs_only():
    a = {(1, 2): 10.0, (3, 4): 10.0, (5, 6): 10.0, (7, 8): 10.0}
    b = {(1, 2): 20.0, (3, 4): 20.0, (5, 6): 20.0, (9, 9): 1000.0}  # (9, 9) is b's alone: left out
    rows = [_row("sep_pos", "SEP_pos", 0.8, 10.0), _row("sep_neg", "SEP_neg", 0.8, 20.0)]
    c = rep.claim_sep_decoupling(rows, {"d/sep_pos": a, "d/sep_neg": b})
    assert c.numbers["ratio"]["n"] == 3 and c.numbers["ratio"]["ratio"] == pytest.approx(2.0)


def test_trades_monotone_verdicts():
    base = [_row("natural", "Normal", 0.0, 100.0)]
    monotone = base + [_row(f"t{b}", "TRADES", 0.5 + 0.1 * b, 150.0 + 10 * b, beta=b) for b in (1, 3, 6)]
    assert rep.claim_trades_monotone(monotone).verdict == "reproduced"
    bumpy = base + [_row("t1", "TRADES", 0.6, 240.0, beta=1), _row("t3", "TRADES", 0.7, 210.0, beta=3),
                    _row("t6", "TRADES", 0.8, 215.0, beta=6)]
    assert rep.claim_trades_monotone(bumpy).verdict == "direction only"
    falling = base + [_row(f"t{b}", "TRADES", 0.5 + 0.1 * b, 90.0 - b, beta=b) for b in (1, 3, 6)]
    assert rep.claim_trades_monotone(falling).verdict == "not reproduced"


def _way_result(std1, std3, seeds=20):
    per = {f"way{w}": {"mean": 200.0, "std": s, "n_seeds": seeds, "relative_bias": 0.01} for w, s in ((1, std1), (3, std3))}
    return {"summary": {"m1": per, "m2": per}, "config": {"seeds": list(range(seeds))}}


def test_way3_verdicts_follow_the_f_interval():
    assert rep.claim_way3_steadier(_way_result(20.0, 5.0)).verdict == "reproduced"
    assert rep.claim_way3_steadier(_way_result(5.2, 5.0)).verdict == "direction only"
    assert rep.claim_way3_steadier(_way_result(5.0, 20.0)).verdict == "not reproduced"
    assert rep.claim_way3_steadier(None).verdict == "not measured"


def test_landscape_verdicts():
    rows = [_row("natural", "Normal", 0.0, 100.0), _row("pgd_at", "MAT", 0.6, 200.0)]
    rng = np.random.default_rng(0)

    def model(ce, ex):
        return {f"{loss}_{m}": list(v * rng.uniform(0.9, 1.1, 30)) for loss, v in (("ce", ce), ("explanation_change", ex))
                for m in ("mean_abs_delta", "hessian_trace")}

    flat_ce = {"models": {"natural": model(1.0, 1.0), "pgd_at": model(0.2, 1.1)}, "config": {"radius": 0.1}}
    assert rep.claim_landscape(flat_ce, rows).verdict == "reproduced"
    both = {"models": {"natural": model(1.0, 1.0), "pgd_at": model(0.2, 0.2)}, "config": {"radius": 0.1}}
    assert rep.claim_landscape(both, rows).verdict == "direction only"
    sharper = {"models": {"natural": model(1.0, 1.0), "pgd_at": model(5.0, 1.0)}, "config": {"radius": 0.1}}
    assert rep.claim_landscape(sharper, rows).verdict == "not reproduced"


def test_per_pair_table_keeps_only_pairs_whose_prediction_was_kept(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"per_image": {
        "index": [1, 2, 3], "target_index": [4, 5, 6], "explanation_loss_end_paper": [1.0, 2.0, 3.0],
        "attacked": [True, True, False], "final_pred": [0, 9, 0], "label": [0, 0, 0]}}))
    assert rep.per_pair_le_end(path) == {(1, 4): 1.0}


def test_replicate_cli_reports_every_claim_from_the_shipped_zoo(tmp_path, monkeypatch, capsys):
    from explrobust_core.cli import main

    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:start -->\nold table\n<!-- claims:end -->\nrest\n")
    assert main(["replicate", "sep", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                 "--update-readme", str(readme)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["key"] for c in report["claims"]] == list("abcdef")
    assert all(c["verdict"] in rep.VERDICTS for c in report["claims"])
    by_key = {c["key"]: c for c in report["claims"]}
    # the shipped evaluations hold every number of (a)–(d), and the zoo ships the curvature of (f)
    assert all(by_key[k]["verdict"] != "not measured" for k in "abcdf")
    assert "| (c)" in (tmp_path / "r.md").read_text() and "| (c)" in capsys.readouterr().out
    text = readme.read_text()
    assert "old table" not in text and (tmp_path / "r.md").read_text() in text
    assert text.startswith("intro\n<!-- claims:start -->\n") and text.endswith("<!-- claims:end -->\nrest\n")
    readme.write_text("no markers\n")
    assert main(["replicate", "sep", "--update-readme", str(readme)]) == 2  # refused in one line
