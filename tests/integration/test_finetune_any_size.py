"""Fine-tuning a SAM 2.1 size (issue 30): ``experiment=finetune arch@model.student=sam2.1_hiera_t`` on generated COCO
data from random official-format weights at 256², with and without LoRA (peft); the official export has exactly the
official key / shape list (``shared/reference/sam2.1_hiera_tiny_state_dict.tsv``) and predicts like the trained model;
a LoRA run changes only adapters and chosen heads, its optimiser holds only those, its checkpoints hold only those
(and a sha256 reference to ``model.init_from``), resume gives every tensor back, its export equals peft's merge;
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
# a checkpoint every step, all mid-epoch (4 batches of 1): Lightning saves those at once (an epoch's last step waits
# for the next validation), so step_0000002.ckpt exists and last.ckpt is step 3's (the slim files are a few MB)
LORA = ("model.lora.rank=4", "model.lora.targets=[trunk,memory_attention,decoder]",
        "model.lora.heads=[sam_mask_decoder.iou_prediction_head]", "data.batch_size=1",
        "callbacks.model_checkpoint.every_n_train_steps=1")
DUMP = "student_at_end.pt"  # the whole student when training ended (tests/helpers/student_dump.py)


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
                "model.prompts.num_correction_clicks=1", "logger=csv", f"run_name={name}",
                "+callbacks.dump._target_=tests.helpers.student_dump.StudentDump",
                f"+callbacks.dump.path={root / 'logs' / 'train' / 'runs' / name / DUMP}", *extra)
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
    from edgetam_train.models.lora import apply_lora, merge_model, parse_spec, split_state_dict

    root, init = project
    run = _train(root, init, "lora", *LORA)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    before = torch.load(init, map_location="cpu", weights_only=True)["model"]
    student = torch.load(run / DUMP, map_location="cpu", weights_only=True)  # every tensor the run ended with
    plain, adapters = split_state_dict(student)
    assert list(plain) == list(before)
    heads = [k for k in plain if k.startswith("sam_mask_decoder.iou_prediction_head.")]
    assert [k for k in plain if not torch.equal(plain[k], before[k])] == heads  # trunk & every other weight: same bits
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
    wrapped.load_state_dict(student)
    lora_out = _predict(wrapped)
    merged = merge_model(wrapped).state_dict()
    sd = _export(run / "checkpoints" / "last.ckpt", tmp_path / "merged.pt")
    assert list(merged) == list(sd) and all(torch.equal(merged[k], sd[k]) for k in sd)
    exported = build_model("sam2.1_hiera_t", image_size=256)
    exported.load_state_dict(sd)
    assert np.abs(lora_out - _predict(exported)).max() <= 1e-4


def _full_format(ckpt: dict, student: dict[str, torch.Tensor]) -> dict:
    """The LoRA checkpoint as it was before checkpoints referred to their base: every official tensor under
    ``student.`` and the adapters in the ``lora`` entry (readers still take it)."""
    from edgetam_train.models.lora import BASE_KEY, LORA_KEY, split_state_dict

    plain, adapters = split_state_dict(student)
    full = {k: v for k, v in ckpt.items() if k != BASE_KEY}
    full["state_dict"] = {f"student.{k}": v for k, v in plain.items()}
    full[LORA_KEY] = {**ckpt[LORA_KEY], "adapters": adapters}
    return full


def test_lora_checkpoint_holds_only_what_trained_and_resumes_and_exports_like_the_whole_model(project, tmp_path):
    from edgetam_train.distill.losses import DistillationLoss, TaskLoss
    from edgetam_train.distill.module import DistillationModule
    from edgetam_train.models.build import build_model
    from edgetam_train.models.checkpoint import file_sha256, read_checkpoint
    from edgetam_train.models.lora import BASE_KEY, LORA_KEY

    root, init = project
    run = _train(root, init, "lora", *LORA)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    student = torch.load(run / DUMP, map_location="cpu", weights_only=True)
    heads = {k for k in student if ".iou_prediction_head." in k}
    assert set(ckpt["state_dict"]) == {f"student.{k}" for k in heads}  # the trained head; the rest is the base's
    assert ckpt[BASE_KEY] == {"path": str(init.resolve()), "bytes": init.stat().st_size, "sha256": file_sha256(init)}
    assert len(ckpt[LORA_KEY]["adapters"]) == 240
    # size: a few MB instead of the whole model (and its reference)
    torch.save(_full_format(ckpt, student), tmp_path / "whole.ckpt")
    slim, whole = last.resolve().stat().st_size, (tmp_path / "whole.ckpt").stat().st_size
    assert slim < 0.1 * whole and slim < 0.1 * init.stat().st_size, (slim, whole)
    # what every export reads (base + trained tensors, adapters merged): the same bits as from the whole checkpoint
    slim_sd, whole_sd = read_checkpoint(last)[0], read_checkpoint(tmp_path / "whole.ckpt")[0]
    assert list(slim_sd) == list(whole_sd) and all(torch.equal(slim_sd[k], whole_sd[k]) for k in whole_sd)
    # resume: Lightning's restore (on_load_checkpoint, then a strict load_state_dict) gives back every tensor
    module = DistillationModule(build_model("sam2.1_hiera_t", image_size=256), None,
                                DistillationLoss(TaskLoss(), lambda_f16=0.0), init_from=str(init),
                                lora={"rank": 4, "targets": ["trunk", "memory_attention", "decoder"],
                                      "heads": ["sam_mask_decoder.iou_prediction_head"]})
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    resumed = module.student.state_dict()
    assert list(resumed) == list(student) and all(torch.equal(resumed[k], student[k]) for k in student)


@pytest.mark.slow
def test_lora_run_resumed_from_its_slim_checkpoint_ends_like_the_uninterrupted_run(project):
    """``ckpt_path=`` the step-2 checkpoint of the 3-step LoRA run: the resumed run's last step gives the same
    tensors as the run that was not interrupted."""
    root, init = project
    run = _train(root, init, "lora", *LORA)
    resumed = _train(root, init, "lora_resumed", *LORA, f"ckpt_path={run / 'checkpoints' / 'step_0000002.ckpt'}")
    a = torch.load(run / DUMP, map_location="cpu", weights_only=True)
    b = torch.load(resumed / DUMP, map_location="cpu", weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


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


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "onnx", "coreml"])
def test_lora_finetuned_sam21_tiny_exports_to_transformers_and_on_device(project, tmp_path, fmt):
    """``edgetam-export <LoRA run's last.ckpt> --format hf|onnx|coreml`` (the merged weights): transformers'
    ``Sam2Model`` loads the directory with no missing / unexpected keys and predicts like our model within 1e-4; the
    ONNX graphs run in onnxruntime within the export's 1e-3 of PyTorch (the CLI checks it); Core ML converts (Hiera's
    bicubic position-embedding resize is a constant of the export size) and its spec is checked (no macOS here)."""
    from edgetam_train.export.cli import main
    from edgetam_train.export.official import fixed_input, image_outputs, load_model

    if fmt == "coreml":
        pytest.importorskip("coremltools")
    root, init = project
    ckpt = _train(root, init, "lora", *LORA) / "checkpoints" / "last.ckpt"
    assert main([str(ckpt), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    if fmt != "hf":
        return
    from transformers import Sam2Model

    image, info = Sam2Model.from_pretrained(tmp_path / fmt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    pixels, points, labels = fixed_input(256, num_points=1, seed=5)
    ref = image_outputs(load_model(ckpt).eval(), pixels, points, labels)
    with torch.no_grad():
        out = image.float().eval()(pixel_values=pixels, input_points=points[:, None].float(),
                                   input_labels=labels[:, None].long(), multimask_output=True)
    assert (out.pred_masks[:, 0] - ref["multimask_logits"]).abs().max() <= 1e-4
    assert (out.iou_scores[:, 0] - ref["multimask_iou"]).abs().max() <= 1e-4
    assert ref["multimask_logits"].std() > 0.05  # not a constant (default-initialised weights: std 0.08)
