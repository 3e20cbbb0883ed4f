"""The prompts of ``edgetam-predict video``: several objects, each with clicks, a box or a mask on some frame.

Three ways to give them (one per run):

* options, grouped by ``--obj-id``: each ``--obj-id N`` starts object N, and the ``--points``/``--labels``,
  ``--box``, ``--mask PNG`` and ``--frame-idx`` after it (up to the next ``--obj-id``) are its prompts. Prompts given
  before the first ``--obj-id`` belong to the first object (object 1 when there is no ``--obj-id``); a ``--frame-idx``
  before the first ``--obj-id`` is the frame of every object that names none::

      --frame-idx 0 --obj-id 1 --points "210,350" --labels 1 --obj-id 2 --box 300,0,500,400 --obj-id 3 --mask m.png

  One object may appear again with another ``--frame-idx`` (more prompts on another frame).
* ``--prompts prompts.json``: a list (or ``{"objects": [...]}``) of ``{"obj_id": 1, "frame_idx": 0, "points":
  [[x, y], ...], "labels": [1, ...], "box": [x0, y0, x1, y1], "mask": "mask.png"}`` (``frame_idx`` defaults to 0;
  a relative mask path is relative to the json file).
* ``--init-masks DIR/00000.png``: the DAVIS semi-supervised protocol. Every object of the palette PNG (pixel value =
  object id; 0 background, 255 void) is prompted by its mask on the frame whose name is the PNG's stem.
* ``--init-masks Annotations_6fps/<video>``: the SA-V semi-supervised protocol. A folder of ``<object>/<frame>.png``
  binary PNGs: every object is prompted by its mask on its first non-empty annotated frame
  (:mod:`edgetam_train.predictor.object_folders`, which also says how such objects are tracked and written).

A ``--mask`` PNG has the video's size; with one non-zero value its non-zero pixels are the mask (a binary 0/255 or
0/1 PNG), with several (a palette PNG of object ids) the pixels equal to the object id. A mask replaces clicks and box
on its frame, so one object takes either a mask or clicks/box per frame.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.data.formats.vos import VOID_ID, object_ids, read_label
from edgetam_train.data.skips import BadSample
from edgetam_train.predictor.object_folders import read_object_folders
from edgetam_train.predictor.prompt_text import parse_box, parse_labels, parse_points
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_state import VideoState

GROUPED = ("obj_id", "frame_idx", "points", "labels", "box", "mask")  # options grouped by --obj-id
JSON_KEYS = ("obj_id", "frame_idx", "points", "labels", "box", "mask")


@dataclass
class ObjectPrompt:
    """Prompts of one object on one frame (video pixels).

    Attributes:
        obj_id: object id, 1 .. 254 (the pixel value of its mask in the output PNGs); from an SA-V annotation folder
            the object folder's integer name (0 allowed: the output is one PNG per object).
        frame_idx: the frame the prompts are on.
        points: (N, 2) float32 xy clicks (with ``labels``), or None.
        labels: (N,) int32, 1 foreground / 0 background.
        box: (4,) float32 x0, y0, x1, y1, or None.
        mask: (H, W) bool mask at the video size, or None (then points and/or box are given).
        source: where the prompt came from, for error messages (``--obj-id 2``, ``prompts.json entry 3`` ...).
    """

    obj_id: int
    frame_idx: int
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    source: str = ""


class _Grouped(argparse.Action):
    """Records ``(dest, value)`` in command-line order in ``namespace.video_prompt_options`` (the grouping by
    ``--obj-id`` needs the order) and also stores the value under ``dest`` as usual."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "video_prompt_options", None) or [])
        items.append((self.dest, values))
        namespace.video_prompt_options = items
        setattr(namespace, self.dest, values)


def add_video_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--obj-id``, ``--frame-idx``, ``--points``, ``--labels``, ``--box``, ``--mask`` (grouped by ``--obj-id``),
    ``--prompts`` and ``--init-masks`` (module docstring)."""
    parser.add_argument("--obj-id", type=int, action=_Grouped, default=None,
                        help="start object N (1 .. 254, its pixel value in the PNGs; repeat for several objects); "
                             "the prompt options after it are its prompts (default: one object, id 1)")
    parser.add_argument("--frame-idx", type=int, action=_Grouped, default=None,
                        help="frame the following prompts are on (before the first --obj-id: every object's; "
                             "default 0)")
    parser.add_argument("--points", action=_Grouped, default=None, help='clicks "x,y;x,y" in video pixels')
    parser.add_argument("--labels", action=_Grouped, default=None,
                        help='"1;0": 1 foreground, 0 background, one per point')
    parser.add_argument("--box", action=_Grouped, default=None, help='"x0,y0,x1,y1" in video pixels')
    parser.add_argument("--mask", type=Path, action=_Grouped, default=None,
                        help="mask prompt: a PNG at the video size (binary, or a palette PNG whose pixels equal to "
                             "the object id are the mask)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help='json list of {"obj_id", "frame_idx", "points", "labels", "box", "mask"} per object '
                             "and frame")
    parser.add_argument("--init-masks", type=Path, default=None,
                        help="palette PNG of object ids named like a frame (DIR/00000.png): every object prompted "
                             "by its mask on that frame (DAVIS semi-supervised protocol); or an SA-V annotation "
                             "folder (Annotations_6fps/<video>, holding <object>/<frame>.png): every object prompted "
                             "by its first non-empty mask, tracked forward from it, written as "
                             "OUT/<object>/<frame>.png (SA-V semi-supervised protocol)")


# ----------------------------------------------------------------------------------------------- reading masks

def read_mask_png(path: Path, obj_id: int, hw: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) bool mask of object ``obj_id`` from a PNG (rules in the module docstring); ``what`` names the option.
    Raises FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: mask {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            values = np.asarray(im if im.mode in ("P", "L", "1", "I", "I;16") else im.convert("L")).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{what}: cannot read the mask {path} ({type(err).__name__}: {err})") from None
    if values.shape != tuple(hw):
        raise ValueError(f"{what}: mask {path} is {values.shape[1]}x{values.shape[0]} but the video is {hw[1]}x{hw[0]} "
                         "(W x H)")
    ids = [int(v) for v in np.unique(values) if v != 0]
    if not ids:
        raise ValueError(f"{what}: mask {path} is empty (all pixels 0)")
    if len(ids) == 1:
        return values != 0
    ids = [i for i in ids if i != VOID_ID]
    if obj_id not in ids:
        raise ValueError(f"{what}: mask {path} holds object ids {ids} but not {obj_id}; a mask PNG with several "
                         "values is read as a palette of object ids")
    return values == obj_id


# ----------------------------------------------------------------------------------------------- three sources

def _parse_group(group: dict, source: str, hw: tuple[int, int], base: Path | None = None) -> ObjectPrompt:
    """One object's options (strings from the command line or values from json) -> :class:`ObjectPrompt`."""
    def as_text(v, sep):  # json gives lists, the command line strings
        return v if isinstance(v, str) else sep.join(",".join(str(c) for c in p) if isinstance(p, list) else str(p)
                                                     for p in v)

    obj_id, frame_idx = group.get("obj_id", 1), group.get("frame_idx", 0)
    for key, value in (("obj_id", obj_id), ("frame_idx", frame_idx)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
    if not 1 <= obj_id <= 254:
        raise ValueError(f"{source}: the object id must be in 1 .. 254 (the pixel value in the palette PNGs; 0 is "
                         f"background, 255 DAVIS' void), got {obj_id}")
    try:
        points = parse_points(as_text(group["points"], ";")) if group.get("points") is not None else None
        labels = parse_labels(as_text(group["labels"], ";")) if group.get("labels") is not None else None
        box = parse_box(as_text(group["box"], ",")) if group.get("box") is not None else None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    if (points is None) != (labels is None):
        raise ValueError(f"{source}: points and labels go together (one label per point)")
    if points is not None and len(points) != len(labels):
        raise ValueError(f"{source}: {len(points)} points but {len(labels)} labels")
    mask = None
    if group.get("mask") is not None:
        if points is not None or box is not None:
            raise ValueError(f"{source}: give either a mask or clicks/box for one object on one frame (a mask "
                             "replaces the clicks on its frame)")
        path = Path(group["mask"])
        mask = read_mask_png(path if base is None or path.is_absolute() else base / path, obj_id, hw, source)
    elif points is None and box is None:
        raise ValueError(f"{source}: object {obj_id} has no prompt; give --points/--labels, --box or --mask")
    return ObjectPrompt(obj_id, frame_idx, points, labels, box, mask, source)


def group_options(items: Sequence[tuple[str, object]]) -> list[tuple[dict, str]]:
    """Command-line ``(dest, value)`` items in order -> one ``(options, source)`` per object (grouping rule of the
    module docstring). Raises ValueError when an option is given twice for one object."""
    default_frame: dict = {}
    pending: dict = {}
    groups: list[dict] = []
    for key, value in items:
        if key == "obj_id":
            groups.append({"obj_id": value, **(pending if not groups else {})})
            continue
        target = groups[-1] if groups else (default_frame if key == "frame_idx" else pending)
        if key in target:
            who = f"object {target['obj_id']}" if "obj_id" in target else "the first object"
            raise ValueError(f"--{key.replace('_', '-')} given twice for {who}; start the next object with --obj-id")
        target[key] = value
    if not groups and pending:
        groups = [{"obj_id": 1, **pending}]
    out = []
    for g in groups:
        out.append(({**default_frame, **g}, f"--obj-id {g['obj_id']}"))
    return out


def prompts_from_json(path: Path, hw: tuple[int, int]) -> list[ObjectPrompt]:
    """The prompts of a ``--prompts`` json file (format in the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--prompts {path}: not valid json ({err})") from None
    entries = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--prompts {path}: expected a non-empty list of objects (or {{\"objects\": [...]}})")
    prompts = []
    for i, entry in enumerate(entries):
        source = f"--prompts {path} entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: expected an object with keys {', '.join(JSON_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(JSON_KEYS))
        if unknown or "obj_id" not in entry:
            raise ValueError(f"{source}: " + (f"unknown key(s) {unknown}" if unknown else "obj_id is missing")
                             + f"; expected keys {', '.join(JSON_KEYS)}")
        prompts.append(_parse_group(entry, source, hw, base=path.parent))
    return prompts


def prompts_from_init_masks(path: Path, frame_names: Sequence[str], hw: tuple[int, int]) -> list[ObjectPrompt]:
    """Every object of the palette PNG ``path`` prompted by its mask on the frame named like the PNG's stem; for a
    folder (SA-V layout), every object prompted by its first non-empty mask."""
    if path.is_dir():
        objects = read_object_folders(path, frame_names, hw)
        return [ObjectPrompt(i, m.frame_idx, mask=m.mask, source=f"--init-masks {m.path} (object {objects.names[i]})")
                for i, m in objects.first.items()]
    if not path.is_file():
        raise FileNotFoundError(f"--init-masks {path} does not exist (expected a palette PNG named like a frame, or an "
                                "SA-V annotation folder <video>/<object>/<frame>.png)")
    if path.stem not in frame_names:
        raise ValueError(f"--init-masks {path}: no frame is named {path.stem!r} (frames: {frame_names[0]!r} .. "
                         f"{frame_names[-1]!r}); the PNG's name picks its frame")
    try:
        label = read_label(path)
    except BadSample as err:
        raise ValueError(f"--init-masks {path}: {err}") from None
    if label.shape != tuple(hw):
        raise ValueError(f"--init-masks {path} is {label.shape[1]}x{label.shape[0]} but the video is "
                         f"{hw[1]}x{hw[0]} (W x H)")
    ids = object_ids(label).tolist()
    if not ids:
        raise ValueError(f"--init-masks {path} holds no object (only 0 background / 255 void)")
    k = list(frame_names).index(path.stem)
    return [ObjectPrompt(i, k, mask=label == i, source=f"--init-masks {path} object {i}") for i in ids]


def collect_prompts(args: argparse.Namespace, frame_names: Sequence[str] | None, hw: tuple[int, int]
                    ) -> list[ObjectPrompt]:
    """The prompts of one run from the options, ``--prompts`` or ``--init-masks`` (exactly one of them), checked:
    frames in range, no object prompted twice on one frame. ``frame_names`` None: a stream of unknown length (frames
    only checked to be >= 0; ``--init-masks`` needs the names)."""
    items = getattr(args, "video_prompt_options", None) or []
    given = [name for name, on in (("--obj-id/--points/--box/--mask", any(k != "frame_idx" for k, _ in items)),
                                   ("--prompts", args.prompts is not None),
                                   ("--init-masks", args.init_masks is not None)) if on]
    if len(given) != 1:
        raise ValueError("give the prompts one way: --points/--labels, --box or --mask (grouped by --obj-id), "
                         "--prompts JSON or --init-masks PNG" + (f"; got {' and '.join(given)}" if given else ""))
    if args.prompts is not None:
        prompts = prompts_from_json(args.prompts, hw)
    elif args.init_masks is not None:
        if frame_names is None:
            raise ValueError("--init-masks picks its frames by the PNGs' names: it needs a frame folder source")
        if items:
            raise ValueError("--init-masks picks its frames by the PNGs' names; --frame-idx does not go with it")
        prompts = prompts_from_init_masks(args.init_masks, frame_names, hw)
    else:
        prompts = [_parse_group(g, source, hw) for g, source in group_options(items)]
    seen = set()
    for p in prompts:
        if p.frame_idx < 0 or (frame_names is not None and p.frame_idx >= len(frame_names)):
            if frame_names is None:
                raise ValueError(f"{p.source}: --frame-idx must be >= 0, got {p.frame_idx}")
            raise ValueError(f"{p.source}: --frame-idx {p.frame_idx} is out of range: the video has {len(frame_names)} "
                             f"frames (valid: 0 .. {len(frame_names) - 1})")
        if (p.obj_id, p.frame_idx) in seen:
            raise ValueError(f"{p.source}: object {p.obj_id} is prompted twice on frame {p.frame_idx}")
        seen.add((p.obj_id, p.frame_idx))
    return prompts


def apply_prompts(predictor: VideoPredictor, state: VideoState, prompts: Sequence[ObjectPrompt]) -> None:
    """Give every prompt to the predictor in order (``add_mask`` for masks, else ``add_clicks``); the predictor's
    ValueErrors (a click outside the frame ...) are raised with the prompt's source."""
    for p in prompts:
        try:
            if p.mask is not None:
                predictor.add_mask(state, p.frame_idx, p.obj_id, p.mask)
            else:
                predictor.add_clicks(state, p.frame_idx, p.obj_id, points=p.points, labels=p.labels, box=p.box)
        except ValueError as err:
            raise ValueError(f"{p.source}: {err}") from None
