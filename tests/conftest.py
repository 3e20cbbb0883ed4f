"""Shared pytest setup.

- ``tests`` is a package mirroring ``edgetam_train`` (``tests/<package>/test_<module>.py``); shared helpers are
  ``tests.helpers.*``, cross-cutting suites ``tests/integration/``; ``scripts/`` and ``scripts/bench/`` are on the
  import path through pytest's ``pythonpath`` setting (pyproject.toml), so ``import download`` / ``import step_memory``;
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
