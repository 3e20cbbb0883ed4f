"""Video fine-tuning with LoRA (issue 30): ``experiment=finetune arch@model.student=edgetam model=distill_video
data=vos_finetune model.lora.targets=[memory_attention,decoder]`` on a generated DAVIS-layout video, 256², 2-frame
clips (the second read from memory), 1 step, with weight EMA. Clips run memory attention, so its adapters train (on
images they get no gradient); every other tensor stays bit-identical to ``model.init_from``, the optimiser holds only
adapters and the head, the checkpoints hold only those, and the official export equals peft's merge of the trained
model."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from edgetam_train.callbacks.ema import EMA
from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.export.cli import main as export_main
from edgetam_train.models.lora import BASE_KEY, LORA_KEY, merge_model, split_state_dict
from tests.helpers.hf_reference import random_official_state_dict

HEAD = "sam_mask_decoder.iou_prediction_head"


def test_lora_on_videos_trains_memory_attention_adapters_and_nothing_frozen(tmp_path):
    make_sample_data(["--out", str(tmp_path / "data"), "--formats", "davis", "--num-davis-videos", "1",
                      "--video-frames", "3", "--video-size", "128x96"])
    before = random_official_state_dict("edgetam", seed=0)
    init = tmp_path / "edgetam.pt"
    torch.save({"model": before}, init)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=[
            f"paths.root_dir={tmp_path}", "experiment=finetune", "arch@model.student=edgetam", "model=distill_video",
            "data=vos_finetune", f"data.train.root={tmp_path / 'data' / 'davis'}", "model.student.image_size=256",
            "model.student.image_encoder.trunk.weights=random", f"model.init_from={init}", "model.lora.rank=4",
            "model.lora.targets=[memory_attention,decoder]", f"model.lora.heads=[{HEAD}]",
            "model.activation_checkpointing=none", "model.prompts.num_correction_clicks=1",
            "model.prompts.max_init_cond_frames=1", "model.scheduler.name=constant", "data.clip_len=2",
            "data.max_objects=1", "data.num_workers=0", "data.pin_memory=false"])
    module = instantiate(cfg.model, _convert_="partial")
    data = instantiate(cfg.data, _recursive_=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[EMA(decay=0.5), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1

    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]} == trainable
    plain, adapters = split_state_dict(module.student.state_dict())
    heads = [k for k in plain if k.startswith(HEAD + ".")]
    assert list(plain) == list(before)
    assert [k for k in plain if not torch.equal(plain[k], before[k])] == heads  # BatchNorm statistics included
    memory = [v for k, v in adapters.items() if k.startswith("memory_attention.") and k.endswith(".lora_B")]
    assert memory and any(v.abs().sum() > 0 for v in memory), "memory attention adapters did not train"

    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert sorted(ckpt["state_dict"]) == sorted(f"student.{k}" for k in heads) and BASE_KEY in ckpt
    assert len(ckpt[LORA_KEY]["adapters"]) == len(adapters)
    assert all(".lora_" in k or f".{HEAD}." in k for k in ckpt["current_model_state"])  # the EMA's live weights
    # the export: the (EMA-averaged, end of training) weights merged by peft, in the official layout
    merged = merge_model(copy.deepcopy(module.student)).state_dict()
    assert export_main([str(tmp_path / "ckpt" / "last.ckpt"), "--format", "official", "--out",
                        str(tmp_path / "ft.pt")]) == 0
    exported = torch.load(tmp_path / "ft.pt", map_location="cpu", weights_only=True)["model"]
    assert list(exported) == list(before) and all(torch.equal(exported[k], merged[k]) for k in merged)
