"""The SA-V per-object PNG layout in ``edgetam-predict video``: ``--init-masks <Annotations_6fps>/<video>`` in,
``OUT/<object>/<frame>.png`` out (the SA-V val / test semi-supervised protocol).

SA-V val and test store one binary PNG per object and annotated frame,
``Annotations_6fps/<video>/<object>/<frame>.png``: objects named by integer id (``000``, ``001`` ...), frames every
4th frame of ``JPEGImages_24fps/<video>/`` (same stems: ``00000``, ``00004`` ...), an object absent on a frame has an
empty PNG. Given such a folder:

* every object is prompted by its mask on its **first annotated frame where the mask is not empty** (frame 0 for all
  objects in SA-V, as the official ``vos_inference.py --per_obj_png_file`` assumes; a later frame for an object that
  appears later, as its ``--track_object_appearing_later_in_video`` does);
* each object is tracked **forward** from that frame to the last frame, and predicted absent before it (the official
  per-object inference; the SA-V protocol scores an object from its first appearance, so a mask before it would only
  lose J&F). The objects' memories are separate, so this equals one forward run per object; the frames' image
  features are computed once for all objects;
* ``OUT/<object>/<frame>.png`` is written for every object folder of the input (same names) and every frame: a palette
  PNG with 1 on the mask and 0 elsewhere, as ``vos_inference.py --per_obj_png_file`` writes it, the layout
  ``edgetam-eval jf --protocol sav`` reads. An object whose PNGs are all empty is never prompted and written empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgetam_train.models.sam2_model import NO_OBJ_SCORE
from edgetam_train.predictor.mask_pngs import save_png
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_state import VideoState

LAYOUT = "<video>/<object>/<frame>.png, one binary PNG per object and annotated frame (SA-V Annotations_6fps)"


@dataclass
class FirstMask:
    """An object's prompt: its mask (H, W) bool on frame ``frame_idx`` (its first non-empty annotated frame)."""

    frame_idx: int
    mask: np.ndarray
    path: Path


@dataclass
class ObjectFolders:
    """What an SA-V annotation folder holds for one video.

    Attributes:
        names: {object id: folder name} of every object folder, in id order (the output uses the same names).
        first: {object id: :class:`FirstMask`} of the objects with at least one non-empty PNG.
    """

    names: dict[int, str]
    first: dict[int, FirstMask]

    @property
    def empty(self) -> list[str]:
        """Names of the object folders whose PNGs are all empty (never prompted, written empty)."""
        return [name for i, name in self.names.items() if i not in self.first]


def object_names(folder: Path, what: str = "--init-masks") -> dict[int, str]:
    """{object id: folder name} of the object folders of ``folder``, sorted by id. Raises FileNotFoundError /
    ValueError naming ``folder`` (no object folders, a name that is not an integer id, two names for one id)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist (expected a palette PNG or a folder {LAYOUT})")
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise ValueError(f"{what} {folder} holds no object folders; expected {LAYOUT}, or a palette PNG of object ids "
                         "(DAVIS: <Annotations>/<video>/00000.png)")
    names: dict[int, str] = {}
    for name in subdirs:
        if not name.isdigit():
            raise ValueError(f"{what} {folder}: object folder {name!r} is not an integer object id (SA-V names them "
                             "000, 001, ...)")
        if int(name) in names:
            raise ValueError(f"{what} {folder}: object folders {names[int(name)]!r} and {name!r} are the same object "
                             f"id {int(name)}")
        names[int(name)] = name
    return dict(sorted(names.items()))


def read_object_mask(path: Path, hw: tuple[int, int], what: str = "--init-masks") -> np.ndarray:
    """(H, W) bool mask of a binary PNG (any value > 0 is the object: 0/1 palette or 0/255 grey). Raises ValueError
    naming ``path`` when it cannot be read or its size is not the video's ``hw``."""
    try:
        with Image.open(path) as im:
            im.load()
            values = np.asarray(im if im.mode in ("P", "L", "1", "I", "I;16") else im.convert("L"))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{what}: cannot read the mask {path} ({type(err).__name__}: {err})") from None
    if values.shape != tuple(hw):
        raise ValueError(f"{what}: mask {path} is {values.shape[1]}x{values.shape[0]} but the video is {hw[1]}x{hw[0]} "
                         "(W x H)")
    return values > 0


def read_object_folders(folder: Path, frame_names: Sequence[str], hw: tuple[int, int],
                        what: str = "--init-masks") -> ObjectFolders:
    """The objects of an SA-V annotation folder and each one's first non-empty mask (module docstring). Every PNG's
    stem must name a frame; raises FileNotFoundError / ValueError naming the folder or file otherwise, when an object
    folder holds no PNG, or when every object is empty."""
    names = object_names(folder, what)
    index = {name: t for t, name in enumerate(frame_names)}
    first: dict[int, FirstMask] = {}
    for obj_id, name in names.items():
        pngs = [p for p in (folder / name).iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")]
        if not pngs:
            raise ValueError(f"{what} {folder}: object folder {name!r} holds no PNG; expected {LAYOUT}")
        unknown = sorted(p.name for p in pngs if p.stem not in index)
        if unknown:
            raise ValueError(f"{what} {folder / name}: {unknown[:5]} name no frame of the video (frames "
                             f"{frame_names[0]!r} .. {frame_names[-1]!r}); each PNG's name picks its frame")
        for path in sorted(pngs, key=lambda p: index[p.stem]):
            mask = read_object_mask(path, hw, what)
            if mask.any():
                first[obj_id] = FirstMask(index[path.stem], mask, path)
                break
    if not first:
        raise ValueError(f"{what} {folder}: every PNG of its {len(names)} object folder(s) is empty; no object to "
                         "track")
    return ObjectFolders(names, first)


def track_from_first_masks(predictor: VideoPredictor, state: VideoState, starts: dict[int, int]
                           ) -> Iterator[tuple[int, torch.Tensor]]:
    """Every frame once, in order, as (frame index, logits (N, H, W) float32 at video size) for the N objects of
    ``state.obj_ids``: object i tracked forward from its prompted frame ``starts[i]``, NO_OBJ_SCORE (absent) on the
    frames before it."""
    h, w = state.video_hw
    ids = list(state.obj_ids)
    for t in range(state.num_frames):
        logits = torch.full((len(ids), h, w), NO_OBJ_SCORE)
        started = [i for i in ids if starts[i] <= t]
        if started:
            _, _, tracked = next(iter(predictor.propagate(state, start_frame_idx=t, max_frames=0, obj_ids=started)))
            for row, obj_id in zip(tracked, started):
                logits[ids.index(obj_id)] = row.float().cpu()
        yield t, logits


def object_score(predictor: VideoPredictor, state: VideoState, frame_idx: int, obj_id: int) -> float:
    """The object-presence logit of ``obj_id`` on a frame; NO_OBJ_SCORE where it has no output (not tracked yet)."""
    out = predictor.get_output(state, frame_idx, obj_id)
    return NO_OBJ_SCORE if out is None else float(out.object_score_logit)


def write_object_pngs(out: Path, names: dict[int, str], frame_name: str, masks: np.ndarray, obj_ids: Sequence[int],
                      palette: list[int]) -> None:
    """``out/<name>/<frame_name>.png`` for every object of ``names``: 1 on its mask (row of bool ``masks`` (N, H, W)
    in ``obj_ids`` order), 0 elsewhere (zeros for an object not in ``obj_ids``), palette PNG."""
    rows = dict(zip(obj_ids, masks))
    blank = np.zeros(masks.shape[1:], dtype=bool)
    for obj_id, name in names.items():
        im = Image.fromarray(rows.get(obj_id, blank).astype(np.uint8))  # mode L; putpalette makes it P
        im.putpalette(palette)
        (out / name).mkdir(parents=True, exist_ok=True)
        save_png(im, out / name / f"{frame_name}.png")  # whole files only, even after Ctrl-C
