"""A batch split across a Dask LocalCluster gives the single server's results."""

import time

import numpy as np
import pytest
from requires import require

pytestmark = pytest.mark.execute


def test_dask_matches_one_server_on_20_rows(compiled_cancer_tree, cancer, tmp_path, no_clip_warning):
    require("distributed", "dask")
    from distributed import Client, LocalCluster

    from veilml.serving.bundle import ModelClient, ModelServer
    from veilml.serving.dask import run_on_dask

    bundle = compiled_cancer_tree.save(tmp_path / "bundle")
    X = cancer[1][:20]
    client = ModelClient(bundle)
    batch, keys = client.encrypt(X), client.evaluation_keys()

    server = ModelServer(bundle)
    start = time.perf_counter()
    alone = client.decrypt_integers(server.run(batch, server.register(keys)))
    one = time.perf_counter() - start
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as dask,
    ):
        run_on_dask(dask, bundle, keys, client.encrypt(X[:2]))  # warm-up: each worker loads the bundle and keys
        start = time.perf_counter()
        spread = client.decrypt_integers(run_on_dask(dask, bundle, keys, batch))
        two = time.perf_counter() - start
    print(f"20 rows: one server {one:.2f} s, Dask with 2 workers {two:.2f} s, speed-up {one / two:.2f}x")
    np.testing.assert_array_equal(spread, alone)
    np.testing.assert_array_equal(alone, compiled_cancer_tree.predict_integers(X, "simulate"))
