"""The optimiser and schedule chosen in the config by ``_partial_`` targets (``distill/optim_select.py``): ours by
default (the same AdamW groups and LambdaLR as before), a ``torch.optim`` class with our parameter groups, a torch
schedule that receives ``trainer.max_steps``, a constant rate for ``null``; nothing but partials or null (a dict is
refused, naming the key); the hyper-parameters hold plain dicts that ``torch.load(weights_only=True)`` reads
(Lightning's resume)."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from edgetam_train.config import CONFIG_DIR
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.optim import build_optimizer, build_scheduler
from edgetam_train.distill.optim_select import describe, make_optimizer, make_scheduler


def _module(tmp_path, *overrides: str) -> DistillationModule:
    base = ["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={tmp_path}", "model.teacher=null"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=base + list(overrides))
    return instantiate(cfg.model, _convert_="partial")


def _configure(module: DistillationModule, max_steps: int = 100):
    module.trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    try:
        return module.configure_optimizers()
    finally:
        module.trainer = None


@pytest.fixture(scope="module")
def default_module(tmp_path_factory) -> DistillationModule:
    return _module(tmp_path_factory.mktemp("optim_select"))


def test_default_is_ours_and_hparams_are_plain(default_module, tmp_path):
    module = default_module
    assert isinstance(module.optimizer_spec, functools.partial) and module.optimizer_spec.func is build_optimizer
    assert module.scheduler_spec.func is build_scheduler
    hp = dict(module.hparams)
    assert hp["optimizer"] == {"_target_": "edgetam_train.distill.optim.build_optimizer", "_partial_": True,
                               "lr": 4e-4, "weight_decay": 0.1, "weight_decay_rule": "sam2", "vision_lr": None,
                               "vision_prefix": "image_encoder", "betas": [0.9, 0.999]}
    assert hp["scheduler"]["_target_"] == "edgetam_train.distill.optim.build_scheduler"
    assert hp["scheduler"]["name"] == "inverse_sqrt"
    torch.save({"hyper_parameters": hp}, tmp_path / "hp.pt")
    assert torch.load(tmp_path / "hp.pt", weights_only=True)["hyper_parameters"]["optimizer"] == hp["optimizer"]

    conf = _configure(module, max_steps=40)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    ref = build_optimizer(module.student, lr=4e-4, weight_decay=0.1, betas=(0.9, 0.999))
    assert type(opt) is torch.optim.AdamW and conf["lr_scheduler"]["interval"] == "step"
    assert [(g["name"], len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == \
        [(g["name"], len(g["params"]), g["weight_decay"]) for g in ref.param_groups]
    ref_sched = build_scheduler(ref, name="inverse_sqrt", total_steps=40, warmup_steps=5, cooldown_steps=10)
    for _ in range(12):  # quickstart: warmup 40 // 8, cooldown 40 // 4
        opt.step(), sched.step(), ref.step(), ref_sched.step()
        assert sched.get_last_lr() == pytest.approx(ref_sched.get_last_lr())


def test_torch_optimizer_gets_our_groups_and_torch_schedule_gets_max_steps(tmp_path):
    module = _module(tmp_path, "model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9",
                     "~model.optimizer.betas", "model.optimizer.lr=0.01",
                     "~model.scheduler", "+model.scheduler._target_=torch.optim.lr_scheduler.OneCycleLR",
                     "+model.scheduler._partial_=true", "+model.scheduler.max_lr=0.02")
    assert module.hparams["optimizer"]["_target_"] == "torch.optim.sgd.SGD"
    conf = _configure(module, max_steps=30)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 30

    vision = _module(tmp_path, "model.optimizer._target_=torch.optim.SGD", "~model.optimizer.betas",
                     "model.optimizer.lr=0.01", "model.optimizer.vision_lr=0.001", "model.scheduler=null")
    groups = {g["name"]: g for g in _configure(vision, max_steps=30).param_groups}
    assert groups["vision_decay"]["lr"] == 0.001 and groups["decay"]["lr"] == 0.01  # stage 2's rule, any class

    constant = _module(tmp_path, "model.scheduler=null")
    assert isinstance(_configure(constant), torch.optim.AdamW)  # no schedule: the optimiser alone


def test_partials_and_none_are_the_one_form_and_bad_factories_are_named():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = make_optimizer(functools.partial(build_optimizer, lr=1e-3, weight_decay=0.05), net)
    assert type(opt) is torch.optim.AdamW and {g["name"] for g in opt.param_groups} == {"decay", "no_decay"}
    assert type(make_optimizer(None, net)) is torch.optim.AdamW  # null: ours with its defaults
    assert make_scheduler(None, opt, 10) is None
    assert isinstance(make_scheduler(functools.partial(build_scheduler, name="cosine", warmup_steps=2), opt, 10),
                      torch.optim.lr_scheduler.LambdaLR)
    assert describe(None) is None
    assert describe(functools.partial(build_scheduler, name="constant")) == {
        "_target_": "edgetam_train.distill.optim.build_scheduler", "_partial_": True, "name": "constant"}
    for bad, key in (({"lr": 1e-3}, "model.optimizer"), ({"name": "constant"}, "model.scheduler")):
        with pytest.raises(TypeError, match=rf"{key}: expected a _partial_ target .* got dict"):
            (make_optimizer(bad, net) if key == "model.optimizer" else make_scheduler(bad, opt, 10))
    with pytest.raises(ValueError, match=r"torch.optim.sgd.SGD takes no \['betas'\]; remove them"):
        make_optimizer(functools.partial(torch.optim.SGD, lr=0.1, betas=[0.9, 0.99], vision_lr=None), net)
    with pytest.raises(ValueError, match=r"returned Linear, expected a torch.optim.Optimizer"):
        make_optimizer(functools.partial(lambda m: m[0]), net)
