"""Shared pytest setup.

- tests import helper modules (reference.py, hf_reference.py) from this directory, and the sample-data generator
  ``scripts/make_sample_data.py`` as ``import make_sample_data``;
- every test runs with one intra-op torch thread: on 2 shared, busy cores two threads oversubscribe and the small
  models here ran ~7x slower (314 s vs 42 s measured for the model-stack files); on a quiet machine one thread costs
  little because the tensors are small.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
