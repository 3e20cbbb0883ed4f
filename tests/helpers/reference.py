"""The official checkpoint layouts (``shared/reference/*_state_dict.tsv``) that tests compare our models with.

CI clones the repo with ``shared/`` beside it (``../shared``); a checkout may also hold ``shared/`` inside. A missing
reference directory is an error, never a silent skip.
"""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = (REPO.parent / "shared" / "reference", REPO / "shared" / "reference")
FILES = {
    "edgetam": "edgetam_state_dict.tsv",
    "sam2.1_hiera_tiny": "sam2.1_hiera_tiny_state_dict.tsv",
    "sam2.1_hiera_small": "sam2.1_hiera_small_state_dict.tsv",
    "sam2.1_hiera_base_plus": "sam2.1_hiera_base_plus_state_dict.tsv",
    "sam2.1_hiera_large": "sam2.1_hiera_large_state_dict.tsv",
}


def reference_dir() -> Path:
    for path in CANDIDATES:
        if path.is_dir():
            return path
    raise FileNotFoundError(f"official layout files not found in {' or '.join(map(str, CANDIDATES))}")


def read_layout(model: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of an official checkpoint, in state_dict order (``#`` and header lines skipped)."""
    path = reference_dir() / FILES.get(model, model)
    layout = {}
    for line in path.read_text().splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        dims = () if shape == "()" else tuple(int(s) for s in shape.split("x"))
        layout[key] = (dims, torch.int64 if key.endswith("num_batches_tracked") else torch.float32)
    return layout


def total_params(model: str) -> int:
    """The ``# total params N`` line of the layout file (nn.Parameter elements)."""
    for line in (reference_dir() / FILES.get(model, model)).read_text().splitlines():
        if line.startswith("# total params"):
            return int(line.split()[-1])
    raise ValueError(f"no '# total params' line for {model}")
