"""Teacher F16 cache (``edgetam-cache-teacher`` + ``data.teacher_cache``): cached F16 equals the live teacher's for
both views, the stage-1 loss on a batch is the live-teacher loss, caching resumes and splits across ranks, a cache
made for another teacher / image size / image set is refused naming the field, and training with a cache builds no
teacher. 256-px sample images, SAM 2.1-T teacher with random weights (seed 0) on the CPU.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from edgetam_train.config import CONFIG_DIR
from edgetam_train.data import teacher_cache as tc
from edgetam_train.data.datamodule import SA1BDataModule
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.distill import cache_teacher
from edgetam_train.distill.losses import DistillationLoss, TaskLoss
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.prompting import PromptConfig
from edgetam_train.distill.teacher import CachedTeacher, FrozenTeacher
from edgetam_train.models.build import build_model, model_config

REPO = Path(__file__).resolve().parents[2]
SIZE = 256
TEACHER = "sam2.1_hiera_t"


def cache_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--out", str(out), "--teacher", TEACHER, "--random-init-seed", "0",
            "--image-size", str(SIZE), "--shard-size", "3", "--num-workers", "0", "--batch-size", "2", *extra]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root with 4 generated SA-1B-format images under data/sample/sa1b."""
    root = tmp_path_factory.mktemp("project")
    make_sample_data(["--out", str(root / "data" / "sample"), "--num-images", "4", "--formats", "sa1b"])
    return root


@pytest.fixture(scope="module")
def sa1b(project) -> Path:
    return project / "data" / "sample" / "sa1b"


@pytest.fixture(scope="module")
def cache(sa1b, tmp_path_factory) -> Path:
    """The cache of the 4 images in 2 shards (3 + 1), both views."""
    out = tmp_path_factory.mktemp("cache") / "f16"
    assert cache_teacher.main(cache_args(sa1b, out)) == 0
    return out


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    """The live teacher: the same architecture and random weights (seed 0) the cache was made with."""
    return cache_teacher.build_teacher(TEACHER, SIZE, None, 0)


def test_manifest_records_teacher_size_transform_and_image_set(cache, sa1b):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["shard_size"] == 3
    assert manifest["teacher"] == {"arch": "sam2_hiera_tiny", "checkpoint_sha256": "random-init"}
    assert manifest["info"]["random_init_seed"] == 0 and manifest["info"]["precision"] == "fp32"
    assert manifest["image_size"] == SIZE and manifest["feature"]["shape"] == [256, SIZE // 16, SIZE // 16]
    assert manifest["transform"]["normalize"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["transform"]["resize"]["size"] == [SIZE, SIZE] and manifest["views"] == ["orig", "flip"]
    assert manifest["transform"]["resize"]["aspect"] == "stretched" and "pad" not in manifest["transform"]
    files = sorted(p.name for p in sa1b.glob("*.jpg"))
    assert manifest["images"] == {"count": 4, "fingerprint": tc.image_set_fingerprint(files)}
    assert sorted(tc.written_shards(cache)) == [0, 1]


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_cached_f16_equals_live_teacher(cache, sa1b, teacher, hflip_p):
    """Each view's cached F16 is the teacher's F16 of that view's image, within float16 rounding; the flipped view
    is the teacher run on the flipped image, not the original's feature map flipped."""
    reader = tc.TeacherCache(cache)
    ds = SA1BDataset(sa1b, image_size=SIZE, max_masks=2, hflip_p=hflip_p, teacher_cache=reader)
    for i in range(len(ds)):
        item = ds[i]
        assert item["flipped"] == (hflip_p == 1.0) and item["teacher_f16"].dtype == torch.float16
        with torch.no_grad():
            live = teacher.encode_image(item["image"][None]).f16[0]
        scale = live.abs().max().item()
        torch.testing.assert_close(item["teacher_f16"].float(), live, rtol=1e-3, atol=1e-3 * scale)
        if hflip_p:
            orig_f16 = reader.read(i, flipped=False).float()
            assert (orig_f16.flip(-1) - live).abs().max() > 0.05 * scale  # a flipped feature map would be wrong


def test_loss_equals_live_teacher_loss_on_the_same_batch(cache, sa1b, teacher):
    """Same batch (one flipped and one original image), same prompts: the loss with the cached F16 and no teacher
    equals the loss with the live teacher (task terms exactly, the F16 term within float16 rounding)."""
    ds = SA1BDataset(sa1b, image_size=SIZE, max_masks=2, hflip_p=0.5, teacher_cache=tc.TeacherCache(cache))
    items = [ds[i] for i in range(len(ds))]
    pick = [next(it for it in items if it["flipped"]), next(it for it in items if not it["flipped"])]
    batch = collate_sa1b(pick)
    assert batch["flipped"].tolist() == [True, False] and batch["teacher_f16"].shape == (2, 256, 16, 16)
    torch.manual_seed(1)
    module = DistillationModule(build_model("edgetam", image_size=SIZE),
                                FrozenTeacher(teacher, allow_random_init=True),
                                DistillationLoss(lambda_f16=1.0, task_loss=TaskLoss()),
                                PromptConfig(num_correction_clicks=2))
    live_batch = {k: v for k, v in batch.items() if k != "teacher_f16"}
    torch.manual_seed(0)
    live = module.clip_step(live_batch).losses
    object.__setattr__(module, "teacher", CachedTeacher())
    torch.manual_seed(0)
    cached = module.clip_step(batch).losses
    assert cached["loss_f16"] > 0
    for key in ("loss_task", "loss_mask", "loss_dice", "loss_iou", "loss_class"):
        assert torch.equal(cached[key], live[key]), key
    torch.testing.assert_close(cached["loss_f16"], live["loss_f16"], rtol=1e-3, atol=0)
    torch.testing.assert_close(cached["loss"], live["loss"], rtol=1e-4, atol=0)


def test_ranks_split_shards_and_resume_skips_done_ones(cache, sa1b, tmp_path):
    """Rank 0 of 2 writes shard 0 only and leaves the cache unfinished (refused by the reader); rank 1 completes it;
    a re-run skips both shards; a deleted shard is rewritten, identically, and only that one."""
    out = tmp_path / "f16"
    first = cache_teacher.run(cache_teacher.build_parser().parse_args(
        cache_args(sa1b, out, "--rank", "0", "--world-size", "2")))
    assert first == {**first, "written": 1, "skipped": 0, "complete": False}
    assert sorted(tc.written_shards(out)) == [0]
    with pytest.raises(RuntimeError, match=r"unfinished \(1 of 2 shards written\)"):
        tc.TeacherCache(out)
    second = cache_teacher.run(cache_teacher.build_parser().parse_args(
        cache_args(sa1b, out, "--rank", "1", "--world-size", "2")))
    assert second["written"] == 1 and second["complete"]
    tc.TeacherCache(out)

    again = cache_teacher.run(cache_teacher.build_parser().parse_args(cache_args(sa1b, out)))
    assert again["written"] == 0 and again["skipped"] == 2 and again["complete"]
    before = load_file(tc.shard_path(out, 1))
    tc.shard_path(out, 1).unlink()
    mtime0 = tc.shard_path(out, 0).stat().st_mtime_ns
    redo = cache_teacher.run(cache_teacher.build_parser().parse_args(cache_args(sa1b, out)))
    assert redo["written"] == 1 and redo["skipped"] == 1 and tc.shard_path(out, 0).stat().st_mtime_ns == mtime0
    # the rewritten shard equals the first one and the single-process cache's
    for other in (before, load_file(tc.shard_path(cache, 1))):
        rewritten = load_file(tc.shard_path(out, 1))
        assert rewritten.keys() == other.keys() == {"orig", "flip"}
        assert all(torch.equal(rewritten[k], other[k]) for k in other)


def test_unreadable_image_is_recorded_and_skipped(sa1b, tmp_path):
    """A jpg that cannot be read when caching is stored as zeros and listed in its shard; the reader refuses that row
    (BadSample corrupt_image) and the training dataset skips the image as it skips any unreadable one."""
    from edgetam_train.data.skips import BadSample

    root = tmp_path / "sa1b"
    shutil.copytree(sa1b, root, ignore=shutil.ignore_patterns(".*"))
    bad = sorted(root.glob("*.jpg"))[1]
    bad.write_bytes(b"not a jpeg")
    assert cache_teacher.main(cache_args(root, tmp_path / "f16", "--no-flip")) == 0
    reader = tc.TeacherCache(tmp_path / "f16")
    assert reader.views == ["orig"]
    with pytest.raises(BadSample, match="corrupt_image.*unreadable when the teacher cache was built"):
        reader.read(1, flipped=False)
    assert reader.read(0, flipped=False).abs().sum() > 0
    ds = SA1BDataset(root, image_size=SIZE, max_masks=2, hflip_p=0.0, teacher_cache=reader, max_skip_rate=0.9)
    item = ds[1]
    assert item["path"] != str(bad) and item["skips"] == {"corrupt_image": 1}
    torch.testing.assert_close(item["teacher_f16"], reader.read(2, flipped=False))


def test_mismatches_are_refused_naming_field_cache_and_expected_value(cache, sa1b, tmp_path, capsys):
    # image size
    dm = SA1BDataModule(sa1b, image_size=512, num_workers=0, pin_memory=False, teacher_cache=str(cache))
    with pytest.raises(tc.TeacherCacheMismatch, match=r"image_size: cache has 256, expected 512") as err:
        dm.setup("fit")
    assert "transform.resize.size: cache has [256, 256], expected [512, 512]" in str(err.value)
    # image set: a split file listing 3 of the 4 images
    split = tmp_path / "split.txt"
    split.write_text("\n".join(sorted(p.stem for p in sa1b.glob("*.jpg"))[:3]))
    dm = SA1BDataModule(sa1b, image_size=SIZE, split_file=str(split), num_workers=0, pin_memory=False,
                        teacher_cache=str(cache))
    with pytest.raises(tc.TeacherCacheMismatch, match=r"images.count: cache has 4, expected 3"):
        dm.setup("fit")
    # teacher architecture and checkpoint
    cfg = OmegaConf.create({"net": model_config("sam2.1_hiera_s"), "checkpoint": None, "allow_random_init": True})
    with pytest.raises(tc.TeacherCacheMismatch, match=r"teacher.arch: cache has sam2_hiera_tiny, expected "
                                                       r"sam2_hiera_small"):
        tc.check_teacher_config(cache, cfg)
    weights = tmp_path / "sam2.1_hiera_tiny.pt"
    weights.write_bytes(b"some other weights")
    cfg = OmegaConf.create({"net": model_config(TEACHER), "checkpoint": str(weights), "allow_random_init": False})
    with pytest.raises(tc.TeacherCacheMismatch, match=rf"teacher.checkpoint_sha256: cache has random-init, expected "
                                                       rf"{tc.file_sha256(weights)}"):
        tc.check_teacher_config(cache, cfg)
    tc.check_teacher_config(cache, OmegaConf.create({"net": model_config(TEACHER), "checkpoint": None,
                                                     "allow_random_init": True}))  # the right teacher passes
    # a cache of the original view only, with flips on
    no_flip = tmp_path / "no_flip"
    shutil.copytree(cache, no_flip)
    manifest = json.loads((no_flip / "manifest.json").read_text())
    (no_flip / "manifest.json").write_text(json.dumps({**manifest, "views": ["orig"]}))
    dm = SA1BDataModule(sa1b, image_size=SIZE, hflip_p=0.5, num_workers=0, pin_memory=False,
                        teacher_cache=str(no_flip))
    with pytest.raises(tc.TeacherCacheMismatch, match=r"views is \['orig'\] .* data.hflip_p=0.5"):
        dm.setup("fit")
    # resuming a cache with other arguments
    assert cache_teacher.main(cache_args(sa1b, cache, "--shard-size", "2")) == 2
    assert "shard_size: cache has 3, expected 2" in capsys.readouterr().err


def test_fit_with_teacher_cache_builds_and_runs_no_teacher(project, cache, monkeypatch, tmp_path):
    """``python train.py ... model/teacher=cached data.teacher_cache=DIR``: two steps, the F16 term is there, and no
    teacher is built; the cache alone (or the cached teacher alone) is refused before anything is built."""
    from edgetam_train.run.train import train

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher was built although data.teacher_cache is set")

    monkeypatch.setattr(FrozenTeacher, "__init__", no_teacher)
    overrides = ["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={project}",
                 f"paths.output_dir={tmp_path / 'run'}", "model/teacher=cached", f"data.teacher_cache={cache}",
                 "trainer.max_steps=2", "trainer.log_every_n_steps=1", "callbacks.mask_pictures.every_n_steps=1",
                 "model.prompts.num_correction_clicks=1",
                 "data.max_masks=2", "data.val.vos.root=null", "data.val.miou.root=null",
                 "callbacks.model_checkpoint.every_n_train_steps=2"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides)
        cache_only = compose("train", overrides=[o for o in overrides if o != "model/teacher=cached"])
        teacher_only = compose("train", overrides=[o for o in overrides if not o.startswith("data.teacher_cache")])
    with pytest.raises(ValueError, match="data.teacher_cache=.* is set but model.teacher is not the cached teacher"):
        train(cache_only)
    with pytest.raises(ValueError, match="model/teacher=cached reads the teacher's F16 from data.teacher_cache"):
        train(teacher_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(cfg)
    assert metrics["train/loss_f16"] > 0 and metrics["train/loss"] > metrics["train/loss_task"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_letterbox_cache_of_earlier_versions_is_refused_with_rebuild_message(cache, sa1b, tmp_path):
    """A cache built with the old longest-side + pad transform holds F16 of letterboxed images: refused, and the
    message says to rebuild it."""
    old = shutil.copytree(cache, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["transform"] = {"resize": {"transform": "LongestMaxSize", "max_size": SIZE, "interpolation": 1,
                                        "area_for_downscale": "image"},
                             "normalize": manifest["transform"]["normalize"],
                             "pad": {"size": [SIZE, SIZE], "position": "top_left", "border_mode": 0, "fill": 0.0}}
    (old / "manifest.json").write_text(json.dumps(manifest))
    dm = SA1BDataModule(sa1b, image_size=SIZE, num_workers=0, pin_memory=False, teacher_cache=str(old))
    with pytest.raises(tc.TeacherCacheMismatch, match="old letterbox transform") as err:
        dm.setup("fit")
    assert "Rebuild it with edgetam-cache-teacher" in str(err.value)
