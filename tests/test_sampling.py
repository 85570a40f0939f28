import json

import numpy as np
import pytest
import torch

from explrobust_core.evaluate import make_evaluation_config, evaluate_model
from explrobust_core.sampling import (PairSet, load_pairs, reference_features, sample_pairs, save_pairs, way3_pairs)


@pytest.fixture(scope="module")
def candidates(mnist_test):
    return mnist_test.batch(range(300))


def test_way3_pairs_cross_clusters_and_are_reproducible(mnist_convnet, candidates, tmp_path):
    x, y = candidates
    a = sample_pairs(3, dataset="mnist5k", labels=y, n_pairs=40, seed=1, model=mnist_convnet, images=x, k=8,
                     reference="convnet")
    b = sample_pairs(3, dataset="mnist5k", labels=y, n_pairs=40, seed=1, model=mnist_convnet, images=x, k=8,
                     reference="convnet")
    save_pairs(a, tmp_path / "a.json")
    save_pairs(b, tmp_path / "b.json")
    da, db = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    da.pop("created"), db.pop("created")
    assert da == db  # same seed and inputs → the same file (but for its timestamp)
    cluster_of = dict(zip(a.prototypes, a.prototype_cluster))
    assert len(a.pairs) == 40 and len(set(a.prototypes)) == 40
    assert all(cluster_of[v] != cluster_of[t] for v, t in a.pairs)
    assert sorted(set(a.prototype_cluster)) == list(range(8))
    c = sample_pairs(3, dataset="mnist5k", labels=y, n_pairs=40, seed=2, model=mnist_convnet, images=x, k=8)
    assert c.pairs != a.pairs


def test_prototypes_are_nearest_their_centroid(mnist_convnet, candidates):
    x, _ = candidates
    feats = reference_features(mnist_convnet, x)
    clusters = way3_pairs(feats, n_prototypes=20, k=4, seed=0)
    labels = np.array(clusters.cluster)
    from explrobust_core.sampling import reduce_dims

    reduced = reduce_dims(feats)
    for proto, c in zip(clusters.prototypes, clusters.prototype_cluster):
        members = np.flatnonzero(labels == c)
        centre = reduced[members].mean(0)
        d = np.linalg.norm(reduced[members] - centre, axis=1)
        rank = int((d < np.linalg.norm(reduced[proto] - centre)).sum())
        assert rank < 5 + 2  # among the quota (5 per cluster) nearest, up to k-means' own centre estimate
    with pytest.raises(ValueError, match="at least k"):
        way3_pairs(feats, n_prototypes=3, k=4)


def test_pair_files_are_validated(tmp_path):
    ok = PairSet(way=1, dataset="mnist5k", n_candidates=10, pairs=[(0, 1)])
    save_pairs(ok, tmp_path / "ok.json")
    assert load_pairs(tmp_path / "ok.json", dataset_size=10).pairs == [(0, 1)]
    with pytest.raises(ValueError, match="more|indexes 10 images"):
        load_pairs(tmp_path / "ok.json", dataset_size=5)
    bad = json.loads((tmp_path / "ok.json").read_text())
    bad["pairs"] = [[0, 99]]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="outside"):
        load_pairs(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "none.json")


def test_evaluation_on_stored_pairs(mnist_convnet, mnist_test, tmp_path):
    x, y = mnist_test.batch(range(200))
    pairs = sample_pairs(2, dataset="mnist5k", labels=y, n_pairs=8, seed=0)
    save_pairs(pairs, tmp_path / "p.json")
    cfg = make_evaluation_config(n_images=50, eps_list=[], explanation_attack="targeted", n_explanation_images=8,
                                 pairs_file=str(tmp_path / "p.json"), targeted={"steps": 5})
    r = evaluate_model(mnist_convnet, mnist_test, cfg)
    kept = r.per_image["index"].tolist()
    assert set(kept) <= set(pairs.victims)
    assert r.summary["pairs"]["way"] == 2
    assert len(kept) + r.summary["explanation_skipped_misclassified"] == 8
    assert r.per_image["target_index"].tolist() == [t for v, t in pairs.pairs if v in kept][: len(kept)]
