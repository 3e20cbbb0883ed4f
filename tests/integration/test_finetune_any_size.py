"""Fine-tuning a SAM 2.1 size (issue 30): ``experiment=finetune arch@model.student=sam2.1_hiera_t`` on generated COCO
data from random official-format weights at 256², with and without LoRA (peft); the official export has exactly the
official key / shape list (``shared/reference/sam2.1_hiera_tiny_state_dict.tsv``) and predicts like the trained model;
a LoRA run changes only adapters and chosen heads, its optimiser holds only those, its export equals peft's merge;
``edgetam-eval miou --data coco:...`` reproduces the run's ``val/mIoU_1click``; bad input is one line naming it.
"""

from __future__ import annotations

import csv
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers.reference import read_layout

REPO = Path(__file__).resolve().parents[2]
LORA = ("model.lora.rank=4", "model.lora.targets=[trunk,memory_attention,decoder]",
        "model.lora.heads=[sam_mask_decoder.iou_prediction_head]")


def _run(project: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Generated COCO data and a random sam2.1_hiera_t saved in the official layout."""
    from edgetam_train.data.synthetic import make_sample_data
    from edgetam_train.models.build import build_model
    from edgetam_train.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ft_any")
    make_sample_data(["--out", str(root / "data"), "--formats", "coco", "--num-images", "4", "--num-val-images", "2",
                      "--max-masks", "6"])
    torch.manual_seed(0)
    init = save_checkpoint(build_model("sam2.1_hiera_t", image_size=256), root / "weights" / "sam2.1_hiera_tiny.pt")
    return root, init


@functools.cache
def _train(root: Path, init: Path, name: str, *extra: str) -> Path:
    coco = root / "data" / "coco"
    proc = _run(root, "train.py", "experiment=finetune", "arch@model.student=sam2.1_hiera_t", "debug=quickstart",
                "model.teacher=null", "data=coco", f"data.train.annotations={coco / 'instances_train.json'}",
                f"data.train.images={coco / 'train'}", f"data.val.annotations={coco / 'instances_val.json'}",
                f"data.val.images={coco / 'val'}", f"model.init_from={init}", "trainer.max_steps=3",
                "model.prompts.num_correction_clicks=1", "logger=csv", f"run_name={name}", *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "logs" / "train" / "runs" / name


def _export(ckpt: Path, out: Path) -> dict[str, torch.Tensor]:
    from edgetam_train.export.cli import main

    assert main([str(ckpt), "--format", "official", "--out", str(out)]) == 0
    sd = torch.load(out, map_location="cpu", weights_only=True)["model"]
    layout = read_layout("sam2.1_hiera_tiny")  # the official loader's strict view: these keys, these shapes
    assert list(sd) == list(layout)
    assert all(tuple(sd[k].shape) == layout[k][0] for k in sd)
    return sd


def _predict(model: torch.nn.Module) -> np.ndarray:
    from edgetam_train.predictor.image import ImagePredictor

    rng = np.random.default_rng(0)
    predictor = ImagePredictor(model.eval())
    predictor.set_image(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    return predictor.predict(points=[(90, 120)], labels=[1], multimask_output=True).low_res_logits


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_finetune_sam21_tiny_exports_the_official_layout(project, tmp_path, lora):
    from edgetam_train.export.official import load_model

    root, init = project
    run = _train(root, init, "lora" if lora else "full", *(LORA if lora else ()))
    ckpt = run / "checkpoints" / "last.ckpt"
    sd = _export(ckpt, tmp_path / "sam2.1_hiera_tiny_ft.pt")
    before = torch.load(init, map_location="cpu", weights_only=True)["model"]
    changed = [k for k in sd if not torch.equal(sd[k], before[k])]
    assert changed, "nothing was fine-tuned"
    trained = load_model(ckpt)  # what the run trained (LoRA: merged by peft) vs the exported file
    exported = load_model(tmp_path / "sam2.1_hiera_tiny_ft.pt", "sam2.1_hiera_t", image_size=256)
    assert np.abs(_predict(trained) - _predict(exported)).max() <= 1e-4


def test_lora_trains_only_adapters_and_heads_and_exports_the_merged_model(project, tmp_path):
    from edgetam_train.models.build import build_model
    from edgetam_train.models.lora import LORA_KEY, apply_lora, join_state_dict, merge_model, parse_spec

    root, init = project
    ckpt = torch.load(_train(root, init, "lora", *LORA) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    before = torch.load(init, map_location="cpu", weights_only=True)["model"]
    plain = {k.removeprefix("student."): v for k, v in ckpt["state_dict"].items()}
    assert list(plain) == list(before)  # official keys; the adapters are apart, in ckpt["lora"]
    heads = [k for k in plain if k.startswith("sam_mask_decoder.iou_prediction_head.")]
    assert [k for k in plain if not torch.equal(plain[k], before[k])] == heads  # trunk & every other weight: same bits
    adapters = ckpt[LORA_KEY]["adapters"]
    assert len(adapters) == 2 * 120 and any(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith("lora_B"))
    # the optimiser holds the adapters and the head, nothing else
    spec = parse_spec({"rank": 4, "targets": ["trunk", "memory_attention", "decoder"],
                       "heads": ["sam_mask_decoder.iou_prediction_head"]})
    wrapped = build_model("sam2.1_hiera_t", image_size=256)
    apply_lora(wrapped, spec)
    trainable = [p.numel() for p in wrapped.parameters() if p.requires_grad]
    optimiser = ckpt["optimizer_states"][0]
    assert sum(len(g["params"]) for g in optimiser["param_groups"]) == len(trainable) == len(adapters) + len(heads)
    held = [int(s["exp_avg"].numel()) for s in optimiser["state"].values()]  # memory attention: no grads on images
    assert sum(held) <= sum(trainable) < 0.02 * sum(p.numel() for p in before.values())
    # the export equals peft's merge of the trained LoRA model
    wrapped.load_state_dict(join_state_dict(plain, adapters))
    lora_out = _predict(wrapped)
    merged = merge_model(wrapped).state_dict()
    sd = _export(_train(root, init, "lora", *LORA) / "checkpoints" / "last.ckpt", tmp_path / "merged.pt")
    assert list(merged) == list(sd) and all(torch.equal(merged[k], sd[k]) for k in sd)
    exported = build_model("sam2.1_hiera_t", image_size=256)
    exported.load_state_dict(sd)
    assert np.abs(lora_out - _predict(exported)).max() <= 1e-4


def test_eval_miou_on_the_coco_split_equals_the_in_training_validation(project, tmp_path, capsys):
    from edgetam_train.eval.cli import main

    root, init = project
    run = _train(root, init, "full")
    (metrics,) = run.glob("csv/version_*/metrics.csv")
    with open(metrics) as f:
        logged = [float(r["val/mIoU_1click"]) for r in csv.DictReader(f) if r.get("val/mIoU_1click")]
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    miou = cfg["data"]["val"]["miou"]
    coco = root / "data" / "coco"
    argv = ["miou", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--data",
            f"coco:{coco / 'instances_val.json'}:{coco / 'val'}", "--clicks", "2", "--csv", str(tmp_path / "m.csv"),
            "--device", "cpu"]
    argv += ["--max-masks", str(miou["max_masks"])] if miou.get("max_masks") else []
    argv += ["--max-images", str(miou["max_images"])] if miou.get("max_images") else []
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    one_click = float(next(line for line in lines if line.startswith("clicks=1 ")).split("mIoU=")[1])
    assert abs(one_click - logged[-1]) < 1e-4, (one_click, logged)
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and set(rows[0]) == {"image", "masks", "mIoU_1click", "mIoU_2click"}


def test_bad_input_is_one_line_naming_it(project):
    from edgetam_train.distill.losses import DistillationLoss, TaskLoss
    from edgetam_train.distill.module import DistillationModule
    from edgetam_train.models.build import build_model
    from edgetam_train.models.checkpoint import save_checkpoint

    root, init = project
    edgetam = save_checkpoint(build_model("edgetam", image_size=256), root / "weights" / "edgetam.pt")

    def make(**kw):
        return DistillationModule(build_model("sam2.1_hiera_t", image_size=256), None,
                                  DistillationLoss(TaskLoss(), lambda_f16=0.0), **kw)

    cases = [
        (dict(init_from=str(edgetam)), ["edgetam", "sam2.1_hiera_t", str(edgetam)]),
        (dict(init_from=str(init), lora={"rank": 4, "targets": ["perceiver"]}), ["'perceiver'", "matches no"]),
        (dict(init_from=str(init), freeze=["image_encoder.trunk"], lora={"rank": 4, "targets": ["trunk"]}),
         ["'trunk'", "image_encoder.trunk", "model.freeze"]),
        (dict(freeze=["sam_mask_decoder"], lora={"rank": 4, "targets": ["decoder"]}),
         ["'decoder'", "sam_mask_decoder"]),
    ]
    for kwargs, names in cases:
        with pytest.raises(ValueError) as err:
            make(**kwargs)
        message = str(err.value)
        assert "\n" not in message and all(n in message for n in names), message
