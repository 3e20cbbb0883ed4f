"""LoRA checkpoints of a training run (``edgetam_train.distill.lora``): with a ``model.init_from`` they hold only the
trained tensors (adapters, heads) and a sha256 reference to the base; resume puts the frozen tensors back from the
run's own ``init_from`` after checking it is the same file, and refuses another one naming both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetam_train.distill.lora import lora_base, restore_lora, save_lora
from edgetam_train.models.checkpoint import CheckpointMismatchError, file_sha256, read_checkpoint, save_checkpoint
from edgetam_train.models.lora import BASE_KEY, LORA_KEY, apply_lora, merge_model, parse_spec

SPEC = parse_spec({"rank": 2, "targets": [r"blocks\.\d+\.proj"], "heads": ["head"]})


class Toy(nn.Module):
    """Two adapted linears, a trained head, a frozen BatchNorm (buffers) and a frozen linear."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"proj": nn.Linear(6, 6)}) for _ in range(2))
        self.norm = nn.BatchNorm1d(6)
        self.other = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)


class Holder(nn.Module):
    """Stands in for the LightningModule: the student under ``student.``."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student


def _wrapped(seed: int, init: dict[str, torch.Tensor]) -> Holder:
    """A student loaded from ``init`` (``model.init_from``), then given adapters (initialised from ``seed``)."""
    torch.manual_seed(seed)
    student = Toy()
    student.load_state_dict(init)
    apply_lora(student, SPEC)
    return Holder(student)


def _trained(init: dict[str, torch.Tensor]) -> Holder:
    """A LoRA student over ``init`` whose adapters and head moved (as after training)."""
    holder = _wrapped(0, init)
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if p.requires_grad:
                p.add_(0.25)
    return holder


def _save(holder: Holder, base: dict | None, ema: bool = False) -> dict:
    state = {k: v.clone() for k, v in holder.state_dict().items()}
    checkpoint = {"state_dict": state}
    if ema:  # the EMA callback's layout: the average in state_dict, the live weights apart
        checkpoint["current_model_state"] = {k: v + 1 for k, v in state.items()}
    trainable = {n for n, p in holder.named_parameters(remove_duplicate=False) if p.requires_grad}
    save_lora(checkpoint, SPEC, trainable, base)
    return checkpoint


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(1)
    path = save_checkpoint(Toy(), tmp_path / "base.pt")
    return path, torch.load(path, weights_only=True)["model"]


def test_slim_checkpoint_holds_only_what_trained_and_resumes_bit_exactly(base):
    path, init = base
    trained = _trained(init)
    reference = lora_base(SPEC, str(path))
    assert reference == {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    checkpoint = _save(trained, reference, ema=True)
    assert sorted(checkpoint["state_dict"]) == ["student.head.bias", "student.head.weight"]
    assert len(checkpoint[LORA_KEY]["adapters"]) == 4 and checkpoint[BASE_KEY] == reference
    assert all(".lora_" in k or ".head." in k for k in checkpoint["current_model_state"])

    resumed = _wrapped(5, init)  # a fresh run: other adapter init, the same init_from
    restore_lora(checkpoint, resumed.state_dict(), lora_base(SPEC, str(path)))
    for key in ("state_dict", "current_model_state"):  # Lightning's and the EMA callback's strict loads
        assert list(checkpoint[key]) == list(resumed.state_dict())
    resumed.load_state_dict(checkpoint["state_dict"], strict=True)
    expected = trained.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.state_dict().items())
    live = checkpoint["current_model_state"]
    assert torch.equal(live["student.head.weight"], expected["student.head.weight"] + 1)
    assert torch.equal(live["student.other.weight"], init["other.weight"])  # frozen: the base's


def test_resume_over_another_init_from_names_both(base, tmp_path):
    path, init = base
    checkpoint = _save(_trained(init), lora_base(SPEC, str(path)))
    torch.manual_seed(2)
    other = save_checkpoint(Toy(), tmp_path / "other.pt")
    fresh = _wrapped(0, init)
    for ours, names in ((lora_base(SPEC, str(other)), [str(path.resolve()), str(other.resolve())]),
                        (None, [str(path.resolve()), "no model.init_from"])):
        with pytest.raises(CheckpointMismatchError) as err:
            restore_lora(dict(checkpoint), fresh.state_dict(), ours)
        assert all(n in str(err.value) for n in names) and "\n" not in str(err.value), str(err.value)


def test_without_init_from_the_checkpoint_holds_the_whole_student(base):
    _, init = base
    trained = _trained(init)
    assert lora_base(SPEC, None) is None and lora_base(SPEC, "none") is None and lora_base(None, "x.pt") is None
    checkpoint = _save(trained, None)
    assert BASE_KEY not in checkpoint and len(checkpoint["state_dict"]) == len(init)


def test_readers_merge_the_slim_checkpoint_over_its_checked_base(base, tmp_path, monkeypatch):
    path, init = base
    trained = _trained(init)
    ckpt = tmp_path / "last.ckpt"
    torch.save(_save(trained, lora_base(SPEC, str(path))), ckpt)
    merged = merge_model(trained.student).state_dict()
    state_dict, _ = read_checkpoint(ckpt)
    assert list(state_dict) == list(init) and all(torch.equal(state_dict[k], merged[k]) for k in merged)

    path.rename(tmp_path / "moved.pt")
    with pytest.raises(CheckpointMismatchError, match=rf"{ckpt}: .*base weights \(model.init_from\) "
                                                      rf"{path.resolve()} are missing.*or set EDGETAM_LORA_BASE"):
        read_checkpoint(ckpt)
    with monkeypatch.context() as env:  # the same file elsewhere (another machine): EDGETAM_LORA_BASE
        env.setenv("EDGETAM_LORA_BASE", str(tmp_path / "moved.pt"))
        state_dict, _ = read_checkpoint(ckpt)
        assert all(torch.equal(state_dict[k], merged[k]) for k in merged)
        env.setenv("EDGETAM_LORA_BASE", str(tmp_path / "nowhere.pt"))
        with pytest.raises(CheckpointMismatchError, match=r"EDGETAM_LORA_BASE=\S*nowhere.pt are missing"):
            read_checkpoint(ckpt)
    torch.manual_seed(3)
    save_checkpoint(Toy(), path)  # another file at the same path
    now, then = file_sha256(path), file_sha256(tmp_path / "moved.pt")
    with pytest.raises(CheckpointMismatchError, match=rf"{path.resolve()} changed since training \(sha256 {now}, "
                                                      rf"expected {then}"):
        read_checkpoint(ckpt)
