"""Graph backends (``edgetam_train.runtime.backends``): ExecuTorch honours ``threads``. Its XNNPACK pool is one per
process, sized to the core count unless reset, so before the fix a ``threads=1`` run (the streaming bench, the app
loop) computed on a worker thread beside the caller. A two-layer conv net lowered to XNNPACK stands in for the
EdgeTAM graphs (a few seconds to export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory):
    exir = pytest.importorskip("executorch.exir")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 32, 32)
    program = exir.to_edge_transform_and_lower(torch.export.export(net, (x,)), partitioner=[XnnpackPartitioner()])
    path = tmp_path_factory.mktemp("pte") / "tiny.pte"
    path.write_bytes(program.to_executorch().buffer)
    with torch.no_grad():
        return path, x.numpy(), net(x).numpy()


def test_executorch_graph_sizes_the_thread_pool(tiny_pte):
    from executorch.extension.pybindings import portable_lib

    from edgetam_train.runtime.backends import ExecuTorchGraph

    path, x, expected = tiny_pte
    before = portable_lib._threadpool_get_thread_count()
    try:
        portable_lib._unsafe_reset_threadpool(2)  # what a 2-core machine starts with
        graph = ExecuTorchGraph(path, ["x"], ["y"], threads=1)
        assert portable_lib._threadpool_get_thread_count() == 1
        np.testing.assert_allclose(graph(x=x)["y"], expected, atol=1e-5)
        ExecuTorchGraph(path, ["x"], ["y"], threads=3)
        assert portable_lib._threadpool_get_thread_count() == 3
        ExecuTorchGraph(path, ["x"], ["y"])  # no count: the pool is left as it is
        assert portable_lib._threadpool_get_thread_count() == 3
    finally:
        portable_lib._unsafe_reset_threadpool(before)
