"""StreamingTracker: the same masks as VideoPredictor.propagate on the same frames and prompts (two objects, one
entering mid-stream), bounded memory over a long stream, and its input errors. Random EdgeTAM weights at 256 px."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from edgetam_train.models.build import build_model
from edgetam_train.predictor import StreamingTracker, VideoPredictor

S = 256
ENTER = 7  # the frame object 2 enters on


@lru_cache(maxsize=None)
def model():
    torch.manual_seed(5)
    return build_model("edgetam", image_size=S).eval()


def clip(num_frames: int) -> list[np.ndarray]:
    """A textured (96, 128, 3) uint8 frame sliding right by 3 px per frame."""
    base = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    return [np.roll(base, 3 * t, axis=1) for t in range(num_frames)]


def offline(predictor: VideoPredictor, frames) -> dict[int, dict[int, torch.Tensor]]:
    """Object 1 clicked on frame 0 and tracked to ENTER - 1; object 2 boxed on ENTER; both tracked to the end."""
    state = predictor.init_state(frames)
    predictor.add_clicks(state, 0, 1, points=[[40, 30]], labels=[1])
    out = {t: dict(zip(ids, lg.clone())) for t, ids, lg in predictor.propagate(state, max_frames=ENTER - 1)}
    predictor.add_clicks(state, ENTER, 2, box=[60, 40, 110, 90])
    out.update({t: dict(zip(ids, lg.clone())) for t, ids, lg in predictor.propagate(state, start_frame_idx=ENTER)})
    return out


def streamed(tracker: StreamingTracker, frames) -> dict[int, dict[int, torch.Tensor]]:
    out = {}
    for t, frame in enumerate(frames):
        if t == 0:
            tracker.add_object(frame, 1, points=[[40, 30]], labels=[1])
        if t == ENTER:
            tracker.add_object(frame, 2, box=[60, 40, 110, 90])
        out[t] = {i: lg.clone() for i, lg in tracker.track(frame).items()}
    return out


def check_equal(ref, got, atol: float = 1e-4) -> None:
    assert sorted(ref) == sorted(got)
    for t in ref:
        assert sorted(ref[t]) == sorted(got[t]) == ([1] if t < ENTER else [1, 2]), t
        for i in ref[t]:
            a, b = ref[t][i] > 0, got[t][i] > 0
            iou = (a & b).sum().item() / max((a | b).sum().item(), 1)
            assert iou >= 0.999, (t, i, iou)
            assert (ref[t][i] - got[t][i]).abs().max().item() <= atol, (t, i)


def test_stream_equals_propagate_with_an_object_added_mid_stream():
    frames = clip(24)  # longer than the 16-pointer and 7-memory windows: the tracker prunes on the way
    predictor = VideoPredictor(model(), fill_hole_area=8)
    check_equal(offline(predictor, frames), streamed(StreamingTracker(predictor), frames))


def test_known_length_clip_shorter_than_the_pointer_window_is_reproduced():
    frames = clip(10)
    predictor = VideoPredictor(model())
    check_equal(offline(predictor, frames), streamed(StreamingTracker(predictor, num_frames=10), frames))


def test_memory_is_flat_over_a_long_stream():
    tracker = StreamingTracker(VideoPredictor(model()))
    frames = clip(8)
    tracker.add_object(frames[0], 1, points=[[40, 30]], labels=[1])
    sizes = []
    for t in range(60):
        tracker.track(frames[t % 8])
        if t == 5:
            tracker.add_object(frames[(t + 1) % 8], 2, mask=np.pad(np.ones((20, 20), bool), ((10, 66), (10, 98))))
        sizes.append(tracker.memory_bytes())
    assert sizes[-1] == sizes[30] > 0
    bank = tracker.state.objects[1].bank
    assert len(bank.cond) == 1 and len(bank.non_cond) == tracker.pointer_window == 15
    assert sum(o.memory is not None for o in bank.non_cond.values()) == tracker.memory_window == 6
    tracker.remove_object(2)
    assert tracker.obj_ids == [1]
    tracker.reset()
    assert tracker.obj_ids == [] and tracker.frame_idx == -1


def test_stream_errors_name_the_problem():
    tracker = StreamingTracker(VideoPredictor(model()), num_frames=2)
    assert tracker.track(clip(1)[0]) == {}  # no object yet: nothing to track
    with pytest.raises(ValueError, match=r"has size \(50, 50\).*\(96, 128\)"):
        tracker.track(np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown obj_id 3"):
        tracker.remove_object(3)
    with pytest.raises(ValueError, match="either a mask or clicks"):
        tracker.add_object(clip(1)[0], 1, points=[[1, 1]], labels=[1], mask=np.ones((96, 128), bool))
    tracker.reset()
    tracker.track(clip(1)[0])
    tracker.track(clip(1)[0])
    with pytest.raises(ValueError, match="declared 2 frames long"):
        tracker.track(clip(1)[0])
