"""Shared pytest setup: tests import helper modules (reference.py, hf_reference.py) from this directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
