"""The reference app loop (``edgetam_train.runtime.app_loop``): with torch blocked from importing it tracks a clip
over an ONNX export and gives StreamingTracker's masks on the same graphs (IoU >= 0.999, logits within 1e-4), keeping
bounded state; the same over an ExecuTorch export in the slow suite; its input errors name the problem. Random
EdgeTAM weights at 256 px, one runtime thread (on 2 busy cores, 2-3x faster than the default); 18 frames, so the
15-pointer and 6-memory windows are pruned. Object 1 is clicked on frame 0; object 2 enters on frame 7 from a mask
and gets a box on that frame (a second prompt: its mask logits are fed back)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ENTER, NUM = 7, 18
ROOT = Path(__file__).resolve().parents[2]

# the app loop in a process where any `import torch` fails (app_loop_logits below, run there)
NO_TORCH = """
import sys
sys.modules["torch"] = None  # import torch -> ImportError
from tests.runtime.test_app_loop import app_loop_logits
app_loop_logits(*sys.argv[1:])
"""


def app_loop_logits(model_dir: str, clip_npz: str, out_npz: str) -> None:
    """AppTracker over the clip in ``clip_npz``: every object's logits per frame and object 1's kept state into
    ``out_npz`` (numpy only: run under NO_TORCH for ONNX; in process for ExecuTorch, whose bindings need torch)."""
    from edgetam_train.runtime.app_loop import AppTracker

    data = np.load(clip_npz)
    tracker, out = AppTracker(model_dir, fill_hole_area=8, threads=1), {}
    for t, frame in enumerate(data["frames"]):
        if t == 0:
            tracker.add_object(frame, 1, points=[[40, 30]], labels=[1])
        if t == int(data["enter"]):
            tracker.add_object(frame, 2, mask=data["mask"])
            tracker.add_object(frame, 2, box=[60, 40, 110, 90])
        out.update({f"{t}/{i}": logits for i, logits in tracker.track(frame).items()})
    obj = tracker.objects[1]
    out["state"] = np.array([len(obj.cond), len(obj.recent), sum(s.memory is not None for s in obj.recent.values()),
                             sum(s.low_res is not None for s in obj.recent.values())])
    np.savez(out_npz, **out)


def clip(num_frames: int) -> np.ndarray:
    """A textured (96, 128, 3) uint8 frame sliding right by 3 px per frame."""
    base = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    return np.stack([np.roll(base, 3 * t, axis=1) for t in range(num_frames)])


def entry_mask() -> np.ndarray:
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True
    return mask


@pytest.fixture(scope="module")
def onnx_dir(edgetam_256_onnx) -> str:
    return edgetam_256_onnx  # tests/conftest.py: made once per session, shared with tests/export/test_ondevice.py


def streaming_tracker_logits(model_dir: str, runtime: str, frames: np.ndarray) -> dict[str, np.ndarray]:
    from edgetam_train.predictor.runtimes import ExportedModel, ExportedVideoPredictor
    from edgetam_train.predictor.streaming import StreamingTracker

    tracker = StreamingTracker(ExportedVideoPredictor(ExportedModel(model_dir, runtime, threads=1), fill_hole_area=8))
    out = {}
    for t, frame in enumerate(frames):
        if t == 0:
            tracker.add_object(frame, 1, points=[[40, 30]], labels=[1])
        if t == ENTER:
            tracker.add_object(frame, 2, mask=entry_mask())
            tracker.add_object(frame, 2, box=[60, 40, 110, 90])
        out.update({f"{t}/{i}": logits.numpy().copy() for i, logits in tracker.track(frame).items()})
    return out


def check_equal_to_streaming_tracker(got: dict[str, np.ndarray], model_dir: str, runtime: str) -> None:
    """The app loop's output ``got`` against StreamingTracker on the same graphs: same keys, IoU >= 0.999 and logits
    within 1e-4 per frame and object; object 1's state after 18 frames is bounded."""
    # object 1: its prompted frame, the last 15 tracked frames' pointers, 6 of them with memory, no old logits
    assert got.pop("state").tolist() == [1, 15, 6, 0]
    ref = streaming_tracker_logits(model_dir, runtime, clip(NUM))
    assert sorted(got) == sorted(ref)
    assert {k.split("/")[1] for k in ref if int(k.split("/")[0]) < ENTER} == {"1"}
    assert {k.split("/")[1] for k in ref if int(k.split("/")[0]) >= ENTER} == {"1", "2"}
    for key, logits in ref.items():
        a, b = logits > 0, got[key] > 0
        assert (a & b).sum() / max((a | b).sum(), 1) >= 0.999, key
        assert np.abs(logits - got[key]).max() <= 1e-4, key
    assert 0 < (ref[f"{ENTER}/2"] > 0).mean() < 1  # the mask prompt's own logits: a real mask, not all one value


def without_torch(model_dir: str, tmp_path: Path) -> dict[str, np.ndarray]:
    """:func:`app_loop_logits` over ``model_dir`` in a process where ``import torch`` fails (NO_TORCH)."""
    np.savez(tmp_path / "clip.npz", frames=clip(NUM), mask=entry_mask(), enter=ENTER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", NO_TORCH, model_dir, str(tmp_path / "clip.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(tmp_path / "out.npz"))


def test_app_loop_without_torch_gives_the_streaming_trackers_masks(onnx_dir, tmp_path):
    check_equal_to_streaming_tracker(without_torch(onnx_dir, tmp_path), onnx_dir, "onnx")


@pytest.mark.slow  # the ExecuTorch export (tests/conftest.py) takes 2-5 min on 2 cores
def test_app_loop_on_executorch_gives_the_streaming_trackers_masks(edgetam_256_executorch, tmp_path):
    # in process: ExecuTorch's Python bindings take torch tensors
    np.savez(tmp_path / "clip.npz", frames=clip(NUM), mask=entry_mask(), enter=ENTER)
    app_loop_logits(edgetam_256_executorch, str(tmp_path / "clip.npz"), str(tmp_path / "out.npz"))
    check_equal_to_streaming_tracker(dict(np.load(tmp_path / "out.npz")), edgetam_256_executorch, "executorch")


def test_app_loop_on_litert_without_torch_gives_the_streaming_trackers_masks(edgetam_256_tflite, tmp_path):
    """LiteRT where the ``litert`` extra is installed (make venv-litert): its interpreter needs no torch either."""
    check_equal_to_streaming_tracker(without_torch(edgetam_256_tflite, tmp_path), edgetam_256_tflite, "tflite")


def test_app_loop_errors_name_the_problem(onnx_dir):
    from edgetam_train.runtime.app_loop import AppTracker

    tracker = AppTracker(onnx_dir, threads=1)
    frame = clip(1)[0]
    assert tracker.track(frame) == {}  # no object yet: nothing to track (and no encoder run)
    with pytest.raises(ValueError, match=r"has size \(50, 50\).*\(96, 128\)"):
        tracker.track(np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB array"):
        tracker.track(frame.astype(np.float32))
    with pytest.raises(ValueError, match="either a mask or clicks"):
        tracker.add_object(frame, 1, points=[[1, 1]], labels=[1], mask=entry_mask())
    with pytest.raises(ValueError, match="no prompt"):
        tracker.add_object(frame, 1)
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) = \(96, 128\)"):
        tracker.add_object(frame, 1, mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="one label"):
        tracker.add_object(frame, 1, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(ValueError, match="unknown obj_id 3"):
        tracker.remove_object(3)
