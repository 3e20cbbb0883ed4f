"""Shared pytest setup.

- ``tests`` is a package mirroring ``edgetam_train`` (``tests/<package>/test_<module>.py``); shared helpers are
  ``tests.helpers.*``, cross-cutting suites ``tests/integration/``; ``scripts/`` and ``scripts/bench/`` are on the
  import path through pytest's ``pythonpath`` setting (pyproject.toml), so ``import download`` / ``import step_memory``;
- session fixtures ``edgetam_256`` / ``edgetam_256_onnx``: random EdgeTAM weights at 256 px and their ONNX export,
  made once for every test module that needs them;
- every test runs with one intra-op torch thread: on 2 shared, busy cores two threads oversubscribe and the small
  models here ran ~7x slower (314 s vs 42 s measured for the model-stack files); on a quiet machine one thread costs
  little because the tensors are small.
"""


import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def edgetam_256(tmp_path_factory):
    """Random EdgeTAM weights (seed 5) at 256 px as an official ``{"model": sd}`` file -> (path, model); made once per
    session (the on-device export tests and the app-loop tests share it)."""
    from edgetam_train.models.build import build_model

    torch.manual_seed(5)
    model = build_model("edgetam", image_size=256).eval()
    path = tmp_path_factory.mktemp("ckpt") / "edgetam.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model


def _export_256(edgetam_256, tmp_path_factory, fmt: str) -> str:
    """``edgetam-export --format fmt`` of :func:`edgetam_256` at 256 px into a fresh session folder."""
    from edgetam_train.export import cli

    out = tmp_path_factory.mktemp(fmt) / "out"
    assert cli.main([str(edgetam_256[0]), "--format", fmt, "--out", str(out), "--image-size", "256"]) == 0
    return str(out)


@pytest.fixture(scope="session")
def edgetam_256_onnx(edgetam_256, tmp_path_factory) -> str:
    """:func:`edgetam_256` exported by ``edgetam-export --format onnx`` (about 10 s, so once per session)."""
    pytest.importorskip("onnxruntime")
    return _export_256(edgetam_256, tmp_path_factory, "onnx")


@pytest.fixture(scope="session")
def edgetam_256_executorch(edgetam_256, tmp_path_factory) -> str:
    """:func:`edgetam_256` exported by ``edgetam-export --format executorch`` (2-5 min on 2 cores: slow tests only;
    the on-device export tests and the app-loop test share it)."""
    pytest.importorskip("executorch.runtime")
    return _export_256(edgetam_256, tmp_path_factory, "executorch")


@pytest.fixture(scope="session")
def edgetam_256_tflite(edgetam_256, tmp_path_factory) -> str:
    """:func:`edgetam_256` exported by ``edgetam-export --format tflite`` (~3 min; only where the ``litert`` extra is
    installed, e.g. ``make venv-litert``: skipped in the dev venv and CI)."""
    pytest.importorskip("litert_torch", reason="the litert extra (pip install 'edgetam-train[litert]')")
    pytest.importorskip("ai_edge_litert.interpreter")
    return _export_256(edgetam_256, tmp_path_factory, "tflite")
