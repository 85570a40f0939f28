"""2-D views for the clusters page. One real UMAP run (its first call compiles for a while)."""

import numpy as np
import pytest

from explrobust_core.embedding import cluster_view, pca_2d, umap_2d
from explrobust_core.sampling import reference_features, way3_pairs


def test_pca_view_with_clusters(mnist_convnet, mnist_test):
    x, y = mnist_test.batch(range(200))
    feats = reference_features(mnist_convnet, x)
    clusters = way3_pairs(feats, n_prototypes=20, k=5)
    view = cluster_view(feats, y, clusters, predictions=mnist_convnet(x).argmax(1))
    assert len(view["x"]) == 200 and sum(view["prototype"]) == 20
    assert set(view["cluster"]) == set(range(5)) and len(view["correct"]) == 200
    with pytest.raises(ValueError, match="method"):
        cluster_view(feats, y, method="tsne")


def test_umap_separates_digits_better_than_chance(mnist_convnet, mnist_test):
    x, y = mnist_test.batch(range(300))
    feats = reference_features(mnist_convnet, x).numpy()
    coords = umap_2d(feats, seed=0)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    # nearest neighbour in the 2-D view usually shares the digit (a trained model's features cluster by class)
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    agree = (y.numpy()[d.argmin(1)] == y.numpy()).mean()
    assert agree > 0.7
    assert pca_2d(feats).shape == (300, 2)
