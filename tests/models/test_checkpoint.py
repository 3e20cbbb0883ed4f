"""Checkpoint files: official ``{"model": sd}`` round trip, Lightning checkpoints, detailed mismatch errors,
``weights_only=True`` everywhere, and starting a model from trunk-only (timm-format) weights via the config."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from edgetam_train.models.build import build_model, model_config
from edgetam_train.models.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from edgetam_train.models.sam2_model import SAM2Model
from tests.helpers.hf_reference import random_official_state_dict

REPO = Path(__file__).resolve().parents[2]
S = 256


def _model(name: str = "edgetam", seed: int | None = 0) -> SAM2Model:
    model = build_model(name, image_size=S).eval()
    if seed is not None:
        ref = {"edgetam": "edgetam", "sam2.1_hiera_t": "sam2.1_hiera_tiny"}[name]
        model.load_state_dict(random_official_state_dict(ref, seed))
    return model


@pytest.fixture(scope="module")
def edgetam() -> SAM2Model:
    return _model("edgetam", seed=0)


@torch.no_grad()
def _outputs(model: SAM2Model) -> list[torch.Tensor]:
    """Image features and one click's decoder outputs on a fixed input."""
    image = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(7))
    feats = model.encode_image(image)
    out = model.decode(feats.f16, feats.high_res, torch.tensor([[[100.0, 120.0]]]), torch.ones(1, 1, dtype=torch.int32),
                       multimask_output=True)
    return [feats.f16, *feats.high_res, out.multimasks, out.ious, out.obj_ptr, out.object_score_logits]


def test_save_load_round_trip_gives_identical_outputs(tmp_path, edgetam):
    path = save_checkpoint(edgetam, tmp_path / "sub" / "edgetam.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["model", "edgetam_arch"]  # the official loaders read ["model"] only
    assert raw["edgetam_arch"]["trunk"] == "repvit_m1" and raw["edgetam_arch"]["image_size"] == S
    assert list(raw["model"]) == list(edgetam.state_dict())
    assert not (tmp_path / "sub" / "edgetam.pt.tmp").exists()

    other = _model("edgetam", seed=5)
    assert not torch.equal(_outputs(other)[0], _outputs(edgetam)[0])
    load_checkpoint(other, path)
    for a, b in zip(_outputs(edgetam), _outputs(other)):
        assert torch.equal(a, b)
    # build_model(checkpoint=...) is the same loader
    built = build_model("edgetam", image_size=S, checkpoint=path).eval()
    assert torch.equal(_outputs(built)[3], _outputs(edgetam)[3])


def test_lightning_checkpoint_loads(tmp_path, edgetam):
    sd = {f"student.{k}": v for k, v in edgetam.state_dict().items()}
    sd["loss.some_buffer"] = torch.zeros(1)  # other modules of the LightningModule are ignored
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 10, "epoch": 0}, path)
    assert list(read_state_dict(path)) == list(edgetam.state_dict())
    other = load_checkpoint(_model("edgetam", seed=3), path)
    for a, b in zip(_outputs(edgetam), _outputs(other)):
        assert torch.equal(a, b)


def test_lightning_checkpoint_without_student_keys(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"other\.ckpt.*no keys under 'student\.'"):
        read_state_dict(path)


def test_missing_file_and_wrong_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointMismatchError, match="list.pt"):
        read_state_dict(path)


def test_mismatch_error_names_file_and_lists_first_20(tmp_path, edgetam):
    sd = dict(edgetam.state_dict())
    keys = list(sd)
    missing = keys[:25]
    for k in missing:
        del sd[k]
    shaped = [k for k in keys[25:] if sd[k].ndim >= 1][:22]
    for k in shaped:
        sd[k] = torch.zeros(*sd[k].shape[:-1], sd[k].shape[-1] + 1)
    unexpected = [f"extra.tensor_{i}" for i in range(21)]
    sd.update({k: torch.zeros(1) for k in unexpected})
    path = save_sd(tmp_path / "broken.pt", sd)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_model("edgetam", seed=None), path)
    msg = str(err.value)
    assert str(path) in msg
    listed = _listed(msg)
    assert listed["missing keys"] == (25, missing[:20], " ... and 5 more")
    assert listed["unexpected keys"] == (21, unexpected[:20], " ... and 1 more")
    n, items, more = listed["shape mismatches"]
    assert (n, len(items), more) == (22, 20, " ... and 2 more")
    k = shaped[0]
    assert items[0] == f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(edgetam.state_dict()[k].shape)}"
    assert isinstance(err.value, ValueError)


def _listed(msg: str) -> dict[str, tuple[int, list[str], str]]:
    """``{title: (count, listed items, " ... and N more" or "")}`` from a mismatch message's indented lines."""
    out = {}
    for line in msg.splitlines()[1:]:
        head, _, rest = line.strip().partition(": ")
        title, count = head[:-1].rsplit(" (", 1)
        rest, sep, n_more = rest.partition(" ... and ")
        out[title] = (int(count), re.split(r", (?=[A-Za-z_])", rest), sep + n_more)  # not inside "(256, 48, 1, 1)"
    return out


def save_sd(path: Path, sd: dict) -> Path:
    torch.save({"model": sd}, path)
    return path


def test_edgetam_file_into_sam21_errors(tmp_path, edgetam):
    path = save_checkpoint(edgetam, tmp_path / "edgetam.pt")
    with torch.device("meta"):
        teacher = build_model("sam2.1_hiera_t", image_size=S)
    with pytest.raises(CheckpointMismatchError, match=r"edgetam\.pt") as err:
        load_checkpoint(teacher, path)
    msg = str(err.value)
    assert "missing keys" in msg and "image_encoder.trunk.pos_embed" in msg
    assert "unexpected keys" in msg and "image_encoder.trunk.body." in msg
    assert "shape mismatches (4)" in msg and "image_encoder.neck.convs.0.conv.weight" in msg


def _is_torch_load(node: ast.AST) -> bool:
    """Whether ``node`` is the expression ``torch.load``."""
    return (isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name)
            and node.value.id == "torch")


def _torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has weights_only=True) of every ``torch.load(...)`` call in a Python file; ``from torch import load``
    and ``name = torch.load`` count as offending (the check could not follow the alias)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            calls.append((node.lineno, False))
        elif isinstance(node, ast.Assign) and _is_torch_load(node.value):
            calls.append((node.lineno, False))
        elif isinstance(node, ast.Call) and _is_torch_load(node.func):
            ok = any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                     for kw in node.keywords)
            calls.append((node.lineno, ok))
    return sorted(calls)


def test_torch_load_always_weights_only():
    """Every ``torch.load(`` in the package, scripts, callbacks, train.py and tests passes ``weights_only=True``."""
    files = [p for d in ("edgetam_train", "scripts", "callbacks", "tests") for p in (REPO / d).rglob("*.py")]
    files += [REPO / "train.py"]
    assert len(files) > 10
    bad, seen = [], 0
    for path in files:
        calls = _torch_load_calls(path)
        seen += len(calls)
        bad += [f"{path.relative_to(REPO)}:{line}" for line, ok in calls if not ok]
    assert seen >= 2  # the two loaders (checkpoint.py, trunk.py) at least
    assert not bad, f"torch.load without weights_only=True at {bad}"


def test_weights_only_check_catches_offenders(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import torch\nx = torch.load('a.pt')\ny = torch.load(\n    'b.pt', weights_only=True)\n"
                    "z = torch.load('c.pt', weights_only=False)\nfrom torch import load\nld = torch.load\n")
    assert _torch_load_calls(path) == [(2, False), (3, True), (5, False), (6, False), (7, False)]


# ----------------------------------------------------------------------------------------------- trunk-only weights

def _build_with_trunk_weights(name: str, path: Path) -> SAM2Model:
    cfg = model_config(name, image_size=S)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"image_encoder.trunk.weights={path}"]))
    return build_model(cfg)


def test_student_from_timm_repvit_weights(tmp_path):
    timm_model = timm.create_model("repvit_m1", pretrained=False)
    with torch.no_grad():
        for t in timm_model.state_dict().values():
            if t.is_floating_point():
                t.normal_()  # distinct from any fresh init
    sd = timm_model.state_dict()
    path = tmp_path / "repvit_m1.pth"
    torch.save(sd, path)
    model = _build_with_trunk_weights("edgetam", path)
    body = model.image_encoder.trunk.body.state_dict()
    used = set()
    for key, value in body.items():
        parts = key.split(".")
        src = key if key in sd else ".".join(parts[0].split("_") + parts[1:])  # stages_0.x <- stages.0.x
        assert torch.equal(value, sd[src]), key
        used.add(src)
    # everything but the classifier head was loaded
    assert {k for k in sd if not k.startswith("head.")} == used


def test_teacher_from_timm_hiera_weights(tmp_path):
    timm_model = timm.create_model("sam2_hiera_tiny", pretrained=False)
    with torch.no_grad():
        for t in timm_model.state_dict().values():
            t.normal_()
    sd = timm_model.state_dict()
    path = tmp_path / "hiera_t.pth"
    torch.save(sd, path)
    model = _build_with_trunk_weights("sam2.1_hiera_t", path)
    trunk = model.image_encoder.trunk.state_dict()
    renamed = {k.replace(".mlp.fc1.", ".mlp.layers.0.").replace(".mlp.fc2.", ".mlp.layers.1."): v
               for k, v in sd.items() if not k.startswith("head.")}
    assert set(trunk) == set(renamed)
    for key, value in trunk.items():
        assert torch.equal(value, renamed[key]), key


def test_bad_trunk_weights_name_the_file(tmp_path):
    path = tmp_path / "not_a_repvit.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="not_a_repvit.pth") as err:
        _build_with_trunk_weights("edgetam", path)
    assert "missing keys" in str(err.value)
