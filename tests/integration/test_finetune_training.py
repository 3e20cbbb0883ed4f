"""Fine-tuning training options: ``model.freeze`` (frozen modules out of the optimizer and in eval mode),
``model.teacher=null`` (task loss only), weight EMA (edgetam_train/callbacks/ema.py) and the validation after the last
step."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from edgetam_train.callbacks.ema import EMA
from edgetam_train.callbacks.final_validation import FinalValidation
from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.finetune import COCODataModule
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.distill.freeze import freeze
from edgetam_train.distill.losses import DistillationLoss
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.optim import build_optimizer, build_scheduler
from edgetam_train.distill.prompting import PromptConfig
from edgetam_train.models.build import build_model

TRUNK = "image_encoder.trunk"


@pytest.fixture(scope="module")
def student_init():
    torch.manual_seed(0)
    model = build_model("edgetam", image_size=256)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _student(init) -> torch.nn.Module:
    model = build_model("edgetam", image_size=256)
    model.load_state_dict(init)
    return model


def test_freeze_leaves_frozen_modules_out_of_the_optimizer_and_in_eval_mode(student_init):
    module = DistillationModule(_student(student_init), teacher=None, loss=DistillationLoss(),
                                freeze=["student.image_encoder.trunk", "no_mem_embed"])
    student = module.student
    assert module.frozen_modules == [TRUNK]
    trunk_ids = {id(p) for p in student.image_encoder.trunk.parameters()}
    assert not student.no_mem_embed.requires_grad
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not optimised & trunk_ids and id(student.no_mem_embed) not in optimised
    assert optimised == {id(p) for p in student.parameters() if p.requires_grad}
    module.train()
    assert all(not m.training for m in student.image_encoder.trunk.modules())
    assert student.sam_mask_decoder.training and student.image_encoder.neck.training
    module.eval()
    module.train(True)
    assert not student.image_encoder.trunk.training


def test_freeze_errors_name_the_entry_and_the_choices(student_init):
    with pytest.raises(ValueError, match=r"'image_encoder.trunck' matches no module.*top-level names: .*"
                                         r"image_encoder, .*sam_mask_decoder"):
        freeze(_student(student_init), ["image_encoder.trunck"])
    with pytest.raises(ValueError, match="freezes every parameter"):
        freeze(_student(student_init), [name for name, _ in _student(student_init).named_children()]
               + ["maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr"])


def test_finetune_experiment_composes_without_a_teacher():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["paths.root_dir=/tmp/unused", "paths.output_dir=/tmp/unused/out",
                                          "experiment=edgetam_finetune", "debug=quickstart", "model.teacher=null",
                                          "model.init_from=null", "model.freeze=[image_encoder.trunk]",
                                          "callbacks=[finetune,ema,early_stopping]"])
    assert cfg.data._target_.endswith("COCODataModule") and cfg.data.val.miou.root is None
    assert cfg.callbacks.best_checkpoint.monitor == "val/mIoU_1click" == cfg.callbacks.early_stopping.monitor
    assert cfg.callbacks.ema._target_ == "edgetam_train.callbacks.ema.EMA" and "final_validation" in cfg.callbacks
    module = instantiate(cfg.model, _convert_="partial")
    assert module.teacher is None and module.frozen_modules == [TRUNK]


def test_task_loss_only_with_ema_keeps_the_frozen_trunk_bit_identical(student_init, tmp_path):
    make_sample_data(["--out", str(tmp_path / "data"), "--formats", "coco", "--num-images", "2",
                           "--num-val-images", "1", "--max-masks", "3"])
    coco = tmp_path / "data" / "coco"
    dm = COCODataModule(train={"annotations": coco / "instances_train.json", "images": coco / "train"},
                        val={"annotations": coco / "instances_val.json", "images": coco / "val",
                             "miou": {"root": None, "max_masks": 2}},
                        image_size=256, max_masks=2, batch_size=1, num_workers=0, pin_memory=False)
    module = DistillationModule(_student(student_init), teacher=None, loss=DistillationLoss(lambda_f16=1.0),
                                prompts=PromptConfig(num_correction_clicks=1),
                                optimizer=partial(build_optimizer, lr=1e-3),
                                scheduler=partial(build_scheduler, name="constant"), freeze=[TRUNK])
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=100,
                         check_val_every_n_epoch=None,
                         callbacks=[EMA(decay=0.5), FinalValidation(),
                                    ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)])
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss_f16"]) == 0.0 and float(metrics["train/loss"]) > 0
    assert 0.0 <= float(metrics["val/mIoU_1click"]) <= 1.0  # validated after step 2 (interval 100)

    final = module.student.state_dict()
    trunk = [k for k in final if k.startswith(TRUNK + ".")]
    assert all(torch.equal(final[k], student_init[k]) for k in trunk)  # BatchNorm statistics included
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    ema, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert all(torch.equal(ema["student." + k], student_init[k]) for k in trunk)
    decoder = [k for k in ema if k.startswith("student.sam_mask_decoder.") and k.endswith("weight")]
    moved = [k for k in decoder if not torch.equal(ema[k], live[k])]
    assert moved, "the EMA weights equal the live weights"
    k = moved[0]
    init = student_init[k[len("student."):]]
    # EMA with decay 0.5 lies strictly between the start and the live weights somewhere
    assert not torch.equal(ema[k], init) and ((ema[k] - live[k]).abs().max() < (init - live[k]).abs().max() + 1e-12)
    assert all(torch.equal(final[k2[len("student."):]], ema[k2]) for k2 in decoder)  # the end copies the EMA in
    assert all(k.startswith("student.") for k in ema) and set(ema) == set(live)

    # resume: the module and the EMA continue from the checkpoint (Lightning's WeightAveraging.on_load_checkpoint)
    resumed = DistillationModule(_student(student_init), teacher=None, loss=DistillationLoss(),
                                 prompts=PromptConfig(num_correction_clicks=1),
                                 optimizer=partial(build_optimizer, lr=1e-3),
                                 scheduler=partial(build_scheduler, name="constant"), freeze=[TRUNK])
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[EMA(decay=0.5)], enable_checkpointing=False)
    trainer.fit(resumed, datamodule=dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 3
    after = resumed.student.state_dict()
    assert all(torch.equal(after[k], student_init[k]) for k in trunk)


def test_ema_copy_leaves_the_teacher_out(student_init):
    """The teacher lives outside the module tree; the EMA's deep copy must neither duplicate nor lose it."""
    teacher = build_model("sam2.1_hiera_t", image_size=256)
    module = DistillationModule(_student(student_init), teacher=None, loss=DistillationLoss())
    object.__setattr__(module, "teacher", teacher)  # as DistillationModule stores a live teacher
    ema = EMA(decay=0.9)
    ema.setup(trainer=None, pl_module=module, stage="fit")
    assert module.teacher is teacher
    assert "teacher" not in ema._average_model.module.__dict__
    n_student = sum(p.numel() for p in module.parameters())
    assert sum(p.numel() for p in ema._average_model.module.parameters()) == n_student
