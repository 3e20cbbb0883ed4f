"""DataModules for fine-tuning on the user's own data: COCO json (``data=coco``), an image + mask folder
(``data=mask_folder``) and DAVIS-layout videos (``data=vos_finetune``).

The image modules are :class:`~edgetam_train.data.datamodule.SA1BDataModule`s with another training dataset: the same
loader, sampler, batches (``collate_sa1b``), skip counting and mid-epoch resume. Validation is the user's own split,
scored by the same 1-click mIoU (``val/mIoU_1click``) or J&F (``val/J&F``) as in distillation; the ``data.val.vos`` /
``data.val.miou`` sets of the ``data/val`` group can be added on top.

``monitor`` names the metric the best checkpoint and early stopping watch (the data configs set it to the metric
their validation logs; ``configs/callbacks/finetune.yaml`` reads it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import Dataset

from edgetam_train.data.datamodule import DataModuleBase, SA1BDataModule, VideoDataModule
from edgetam_train.data.datasets.coco import COCODataset, COCOValDataset
from edgetam_train.data.datasets.mask_folder import MaskFolderDataset, MaskFolderValDataset
from edgetam_train.data.datasets.val import VOSValDataset, build_val_sets, plain_config
from edgetam_train.data.formats.images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MIN_IMAGE_SIDE
from edgetam_train.data.mixture import MixtureDataset

log = logging.getLogger(__name__)

# data.val keys of the data/val group (extra sets); the other data.val keys describe the user's split
GROUP_VAL_KEYS = ("vos", "miou", "num_workers")


def plain(node: Any) -> Any:
    """``plain_config`` with paths as strings: the hyper-parameters go into checkpoints, which resume loads with
    ``torch.load(weights_only=True)`` (it refuses ``pathlib`` objects)."""
    node = plain_config(node)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return str(node) if isinstance(node, Path) else node


def split_val(val: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``data/val`` group part of ``data.val``, the user's split part)."""
    val = dict(val or {})
    return ({k: v for k, v in val.items() if k in GROUP_VAL_KEYS},
            {k: v for k, v in val.items() if k not in GROUP_VAL_KEYS})


class ImageFinetuneDataModule(SA1BDataModule):
    """Stage-1-style image fine-tuning: ``train_class(**train)`` items, ``val_class(**val split)`` validation.

    Args:
        train: the training set's own arguments (config ``data.train``; COCO: annotations, images, iscrowd; mask
            folder: root, image_dir, mask_dir).
        val: ``data.val``: the user's split (the same keys as ``train``, a null path leaves it out) plus the
            ``data/val`` group's ``vos`` / ``miou`` / ``num_workers``; ``miou.max_images`` / ``miou.max_masks`` also
            limit the user's split.
        image_size, max_masks, batch_size, num_workers, pin_memory, hflip_p, max_skip_rate, seed, prefetch_factor,
            drop_last, max_image_pixels, min_image_side: as :class:`SA1BDataModule`.
        monitor: the validation metric the callbacks watch (module docstring).
        root: unused; accepted because shared debug configs (``debug=quickstart``) set the SA-1B ``data.root``.
    """

    train_class: type = COCODataset
    val_class: type = COCOValDataset
    split_keys: tuple[str, ...] = ("annotations", "images")  # the user's split is configured when all are set

    def __init__(self, train: Mapping[str, Any], val: Mapping[str, Any] | None = None, image_size: int = 1024,
                 max_masks: int = 64, batch_size: int = 4, num_workers: int = 8, pin_memory: bool = True,
                 hflip_p: float = 0.5, max_skip_rate: float = 0.05, seed: int = 0, prefetch_factor: int = 2,
                 drop_last: bool = True, monitor: str = "val/mIoU_1click", root: str | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 min_image_side: int = DEFAULT_MIN_IMAGE_SIDE) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        DataModuleBase.__init__(self)  # not SA1BDataModule's: no SA-1B root to index
        self.save_hyperparameters(plain(args), logger=False)  # saved in checkpoints: no DictConfig, no Path
        self._image_limits()
        self.train_set: Dataset | None = None
        self.val_files: list[str] = []
        self.val_sets: list = []

    def prepare_data(self) -> None:
        """Nothing to prepare: the annotation files are read in ``setup``."""

    def user_val_set(self) -> Dataset | None:
        """The user's validation split (``val_class``), or None when its paths are not all set."""
        group, split = split_val(self.hparams.val)
        if all(split.get(k) is None for k in self.split_keys):
            return None
        missing = [k for k in self.split_keys if split.get(k) is None]
        if missing:
            raise ValueError(f"data.val: set {', '.join('data.val.' + k for k in missing)} too (the validation "
                             f"split needs {', '.join(self.split_keys)})")
        miou = dict(group.get("miou") or {})
        return self.val_class(**split, max_images=miou.get("max_images"), max_masks=miou.get("max_masks"))

    def setup(self, stage: str | None = None) -> None:
        """Read and check the training and validation annotations; build the datasets."""
        if self.train_set is not None:
            return
        hp = self.hparams
        self.train_set = self.train_class(**dict(hp.train), image_size=hp.image_size, max_masks=hp.max_masks,
                                          hflip_p=hp.hflip_p, seed=hp.seed, max_skip_rate=hp.max_skip_rate)
        if len(self.train_set) < hp.batch_size:
            raise ValueError(f"data.train has {len(self.train_set)} usable images, fewer than data.batch_size="
                             f"{hp.batch_size}: lower the batch size or add images")
        group, _ = split_val(hp.val)
        own = self.user_val_set()
        extra = any((group.get(k) or {}).get("root") is not None for k in ("vos", "miou"))
        self.val_sets = (build_val_sets(group) if extra else []) + ([own] if own is not None else [])
        log.info("fine-tuning on %d images (%s); validation: %s", len(self.train_set), type(self.train_set).__name__,
                 ", ".join(f"{type(s).__name__} ({len(s)})" for s in self.val_sets) or "none")


class COCODataModule(ImageFinetuneDataModule):
    """``data=coco``: ``data.train.annotations`` / ``images`` (+ ``iscrowd``), ``data.val.annotations`` / ``images``."""


class MaskFolderDataModule(ImageFinetuneDataModule):
    """``data=mask_folder``: ``data.train.root`` (``images/`` + ``masks/``), ``data.val.root`` likewise."""

    train_class = MaskFolderDataset
    val_class = MaskFolderValDataset
    split_keys = ("root",)


def unannotated_videos(root: str | Path, image_dir: str = "JPEGImages", mask_dir: str = "Annotations") -> list[str]:
    """Video folders of ``<root>/<image_dir>`` that have frames but no ``<root>/<mask_dir>/<video>/*.png``: the clip
    dataset lists videos by their annotation folders, so these would be left out without a word."""
    images, masks = Path(root) / image_dir, Path(root) / mask_dir
    if not images.is_dir():
        raise FileNotFoundError(f"data.train: {images} is not a directory (expected {image_dir}/<video>/<frame>.jpg "
                                f"under {root})")
    out = []
    for video in sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any((images / video).glob("*.jpg")) and not any((masks / video).glob("*.png")):
            out.append(video)
    return out


class VOSFinetuneDataModule(VideoDataModule):
    """``data=vos_finetune``: DAVIS-layout training videos (``data.train``: root, image_dir, mask_dir, split_file)
    as clips through memory (the stage-2 clip pipeline, ``VOSDataset``), J&F on ``data.val`` (same keys; a null root
    leaves it out) plus the ``data/val`` group's sets.

    Args:
        train / val: as above. monitor: the metric the callbacks watch (``val/J&F``).
        **kwargs: :class:`VideoDataModule` arguments (image_size, clip_len, max_objects, batch_size, augment, ...).
    """

    def __init__(self, train: Mapping[str, Any], val: Mapping[str, Any] | None = None, monitor: str = "val/J&F",
                 **kwargs: Any) -> None:
        train = dict(plain(train))
        if train.get("root") is None:
            raise ValueError("data.train.root is not set: the folder holding JPEGImages/ and Annotations/")
        unannotated = unannotated_videos(train["root"], train.get("image_dir", "JPEGImages"),
                                         train.get("mask_dir", "Annotations"))
        for video in unannotated[:10]:
            log.warning("data.train: video %s has frames but no annotations (no %s/%s/<frame>.png); left out",
                        Path(train["root"]) / train.get("image_dir", "JPEGImages") / video,
                        train.get("mask_dir", "Annotations"), video)
        if len(unannotated) > 10:
            log.warning("data.train: %d more videos without annotations left out", len(unannotated) - 10)
        self.unannotated = unannotated
        entry = {"_target_": "edgetam_train.data.datasets.vos.VOSDataset", "weight": 1.0, **train}
        self.user_val = plain(val)
        group, _ = split_val(self.user_val)
        super().__init__(datasets={"videos": entry}, val=group, **kwargs)
        # save_hyperparameters also collected this frame's arguments (the whole data.val, the DictConfigs Hydra passes
        # with _recursive_: false): the parent reads the group part of val, and checkpoints need plain values
        for key, value in list(self.hparams.items()):
            self.hparams[key] = plain(value)
        self.hparams["val"], self.hparams["user_val"] = group, self.user_val
        self.monitor = monitor

    def setup(self, stage: str | None = None) -> None:
        """The clip dataset of ``data.train`` and the validation videos of ``data.val`` (+ the group's sets)."""
        if self.train_set is not None:
            return
        self.train_set = MixtureDataset({name: self.build_dataset(name, e) for name, e in self.entries.items()})
        group, split = self.hparams.val, split_val(self.user_val)[1]
        extra = any((group.get(k) or {}).get("root") is not None for k in ("vos", "miou"))
        self.val_sets = (build_val_sets(group) if extra else []) + (
            [VOSValDataset(**split)] if split.get("root") is not None else [])
        log.info("fine-tuning on %d videos (VOSDataset clips of %d frames); validation: %s", len(self.train_set),
                 self.hparams.clip_len, ", ".join(f"{type(s).__name__} ({len(s)})" for s in self.val_sets) or "none")
