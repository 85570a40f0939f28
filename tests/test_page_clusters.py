"""Clusters page: AppTest runs of the "Show me" default (Way3 on the shipped natural model) and its controls,
and a browser run that box-selects points and switches to UMAP (the one UMAP run of this file)."""

from pathlib import Path

import numpy as np
import pytest

from explrobust_core.sampling import load_pairs

from apptest_pages import by_label, open_page, show_me

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models_zoo" / "mnist5k" / "pairs_way3.json"


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_selection_events_give_image_indices():
    from explrobust_core.embedding import indices_from_selection

    points = [{"curve_number": 1, "customdata": [7, 3, 3, 0]}, {"customdata": {"0": 2, "1": 5}},
              {"curve_number": 0, "x": 0.1},  # a pair line: no image
              {"customdata": 7}, {"customdata": "n/a"}]
    assert indices_from_selection({"points": points, "point_indices": [0, 1]}) == [7, 2]
    assert indices_from_selection({}) == [] and indices_from_selection(None) == []


def test_show_me_reproduces_the_shipped_way3_pairs_and_offers_them_as_json(tmp_path):
    at = open_page("clusters", "Clusters")
    assert not at.get("plotly_chart")  # nothing heavy before the click
    show_me(at)
    assert len(at.get("plotly_chart")) == 1
    metrics = _metrics(at)
    assert metrics["Pairs"] == "150" and metrics["Pairs across clusters"] == "100%"
    # SEP Appendix C: explanations within a cluster are closer than across clusters (natural model, gradient maps)
    assert float(metrics["L_e within clusters"]) < float(metrics["L_e between clusters"])
    assert any("exactly the shipped" in s.value for s in at.success)

    result = at.session_state["clusters_result"]
    cluster = np.asarray(result["view"].cluster)
    assert result["view"].n == 1000 and cluster.shape == (1000,) and set(cluster.tolist()) == set(range(10))
    # the JSON the page offers (also in the page's zip) loads with load_pairs and is the shipped pair file
    blob = at.session_state["_page_exports"]["pairs_way3.json"]
    path = tmp_path / "pairs_way3.json"
    path.write_bytes(blob)
    pairs = load_pairs(path, dataset_size=1000)
    assert pairs.pairs == load_pairs(SHIPPED).pairs and pairs.way == 3 and pairs.k == 10
    assert pairs.reference.startswith("natural sha256:")
    # Way3: victims are prototypes, prototypes carry their own cluster, each target lies in another cluster
    assert set(pairs.victims) <= set(pairs.prototypes) and set(pairs.targets) <= set(pairs.prototypes)
    assert cluster[pairs.prototypes].tolist() == pairs.prototype_cluster
    assert all(cluster[v] != cluster[t] for v, t in pairs.pairs)
    button = next(d for d in at.get("download_button") if d.label.startswith("Download the pair indices"))
    try:  # the button serves exactly these bytes (media ids are content hashes)
        from streamlit.runtime.memory_media_file_storage import _calculate_file_id
    except ImportError:  # pragma: no cover - a streamlit without that helper
        pass
    else:
        assert _calculate_file_id(blob, "application/json", "pairs_way3.json") in button.proto.url

    # default gallery: the first pairs, victim then target, with their explanation overlays
    images = at.get("image")
    captions = [c for im in images for c in im.captions]
    assert len(captions) == 24
    first_victim, first_target = pairs.pairs[0]
    assert captions[0].startswith(f"#{first_victim} ") and captions[0].endswith(" V")
    assert captions[1].startswith(f"#{first_target} ")

    # the gallery of one cluster: its members only, prototypes first; no recomputation of the pairs
    at.selectbox(key="clusters_gallery_choice").set_value(3).run()
    assert not at.exception
    shown = [int(c.split()[0][1:]) for im in at.get("image") for c in im.captions]
    assert shown and all(cluster[i] == 3 for i in shown)
    protos3 = [p for p, c in zip(pairs.prototypes, pairs.prototype_cluster) if c == 3]
    assert shown[: len(protos3)] == protos3[: len(shown)]
    # colour by label: same result object, still one chart
    at.radio(key="clusters_colour").set_value("label").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    assert at.session_state["clusters_result"]["pairs_json"] == result["pairs_json"]


def test_way1_pairs_cross_clusters_less_are_saved_and_errors_are_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path))
    at = open_page("clusters", "Clusters")
    by_label(at.radio, "Sampling").set_value(1)  # Way1
    show_me(at)
    metrics = _metrics(at)
    assert metrics["Pairs"] == "150"
    crossing = float(metrics["Pairs across clusters"].rstrip("%")) / 100
    assert 0.6 < crossing < 1.0  # random pairs fall in one cluster about 1/k of the time
    assert not at.success  # not the shipped Way3 file
    at.button(key="clusters_save").click().run()
    saved = list((tmp_path / "pairs").glob("*.json"))
    assert [p.name for p in saved] == ["mnist5k-test-way1-natural-n1000-k10-seed0.json"]
    stored = load_pairs(saved[0], dataset_size=1000)
    assert stored.way == 1 and len(stored.pairs) == 150 and all(v != t for v, t in stored.pairs)
    assert at.success and str(saved[0]) in at.success[0].value
    by_label(at.number_input, "Candidate images").set_value(20)  # 20 candidate images …
    by_label(at.slider, "Clusters k").set_value(30)  # … but 30 clusters
    show_me(at)
    assert at.error and "k must be between 2" in at.error[0].value


@pytest.mark.browser
def test_browser_clusters_box_selection_and_umap(browser_page):
    from playwright.sync_api import expect

    page = browser_page.page
    browser_page.open("Clusters")
    page.get_by_role("button", name="Show me").click()
    browser_page.wait_idle()
    chart = page.locator("[data-testid='stPlotlyChart']")
    expect(chart).to_have_count(1, timeout=120_000)
    expect(page.get_by_test_id("stImage")).to_have_count(24, timeout=60_000)
    expect(page.get_by_text("These are exactly the shipped")).to_be_visible()
    browser_page.assert_no_exception()
    browser_page.screenshot("clusters")

    # a box selection in the middle of the map shows the selected images
    drag = chart.locator(".nsewdrag").first
    drag.scroll_into_view_if_needed()
    expect(drag).to_be_visible(timeout=30_000)
    box = drag.bounding_box()
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.6 * box["height"], steps=12)
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.8 * box["height"], steps=12)
    page.mouse.up()
    expect(page.get_by_text("images selected in the map")).to_be_visible(timeout=60_000)
    browser_page.wait_idle()
    assert page.get_by_test_id("stImage").count() > 0
    browser_page.assert_no_exception()
    browser_page.screenshot("clusters_selection")

    # UMAP on request: PCA stays on screen while it computes, then the UMAP map replaces it
    page.get_by_text("UMAP", exact=True).click()
    expect(chart.get_by_text("UMAP of the penultimate layer")).to_be_visible(timeout=240_000)
    browser_page.wait_idle(240_000)
    expect(page.get_by_text("Computing the UMAP map")).to_have_count(0)
    browser_page.assert_no_exception()
    browser_page.screenshot("clusters_umap")


def test_cluster_explanation_loss_matches_pairwise_l_e():
    import torch

    from explrobust_core.metrics import explanation_loss
    from explrobust_core.sampling import cluster_explanation_loss, pairwise_explanation_loss

    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(9, 6, 5, generator=gen)
    maps = maps / maps.sum(dim=(1, 2), keepdim=True)
    cluster = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    d = pairwise_explanation_loss(maps)
    i, j = torch.triu_indices(9, 9, 1)
    direct = explanation_loss(maps[i], maps[j]).double()
    torch.testing.assert_close(d[i, j], direct, rtol=1e-6, atol=0)
    same = torch.tensor([cluster[a] == cluster[b] for a, b in zip(i.tolist(), j.tolist())])
    out = cluster_explanation_loss(maps, cluster)
    assert out["intra_pairs"] == 1 + 3 + 6 and out["inter_pairs"] == 36 - 10
    assert out["intra_mean"] == pytest.approx(float(direct[same].mean()), rel=1e-6)
    assert out["inter_mean"] == pytest.approx(float(direct[~same].mean()), rel=1e-6)
    assert out["inter_std"] == pytest.approx(float(direct[~same].std()), rel=1e-6)
    assert cluster_explanation_loss(maps[:2], [0, 1])["intra_mean"] is None
    with pytest.raises(ValueError, match="cluster ids"):
        cluster_explanation_loss(maps, cluster[:3])


def test_cluster_pairs_measures_the_pairs_it_returns(digits_convnet, digits_test):
    from explrobust_core.clusters import batched_maps, cluster_pairs, cluster_table, pair_table
    from explrobust_core.metrics import explanation_loss

    x, y = digits_test.images[:120], digits_test.labels[:120]
    view = cluster_pairs(digits_convnet, x, y, way=2, n_pairs=30, k=4, dataset="digits", seed=1,
                         explainer="gradient")
    assert view.n == 120 and view.pca.shape == (120, 2) and set(view.cluster.tolist()) == set(range(4))
    p = np.asarray(view.pairs.pairs)
    assert len(p) == 30 and (y[p[:, 0]] != y[p[:, 1]]).all()  # Way2: different labels
    maps = batched_maps(digits_convnet, x, "gradient", batch_size=7)  # other batches, same maps
    np.testing.assert_allclose(view.pair_loss, explanation_loss(maps[p[:, 0]], maps[p[:, 1]]).double().numpy(),
                               rtol=1e-5, atol=0)
    assert view.crossing() == pytest.approx(float(np.mean(view.cluster[p[:, 0]] != view.cluster[p[:, 1]])))
    assert view.highlighted().sum() == len(set(p.ravel().tolist()))
    assert view.roles()[int(p[0, 0])] == "V"
    assert all(view.cluster[i] == 2 for i in view.gallery(2, 8)) and len(view.gallery(None, 8)) == 8
    classes = digits_test.info.classes
    assert cluster_table(view, classes)["images"].sum() == 120 and len(pair_table(view, classes)) == 30
    with pytest.raises(ValueError, match="colour_by"):
        view.groups("nope", classes)


def test_the_clusters_page_explains_under_the_model_lock(monkeypatch):
    """Captum's display methods hook the shared cached model: every explanation runs holding its lock."""
    import threading

    import explrobust_core.clusters as core
    from pages import ui

    lock = ui.model_lock(str(ui.checkpoints()["mnist5k/natural"].path))
    held = []

    def probe(*args, **kwargs):
        other = []
        t = threading.Thread(target=lambda: other.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
        if other[0]:
            lock.release()
        held.append(not other[0])
        return real(*args, **kwargs)

    real = core.explanation_maps_in_batches
    monkeypatch.setattr(core, "explanation_maps_in_batches", probe)
    at = open_page("clusters", "Clusters")
    by_label(at.number_input, "Seed").set_value(7)  # parameters no other test caches
    by_label(at.selectbox, "Explanation").set_value("guided_backprop")  # a captum method
    show_me(at)
    assert held and all(held)
