"""The stage-2 quick start on 2 CPU processes (DDP, gloo) as users launch it: ``python train.py ... trainer=ddp
trainer.accelerator=cpu trainer.devices=2`` (Lightning starts the second process). Ranks train on different samples,
every rank draws the same dataset at every step, and only rank 0 writes the one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def test_video_quickstart_on_two_cpu_processes(tmp_path):
    project = tmp_path / "project"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(project / "data" / "sample"), "--formats", "sa1b,sav,davis", "--num-images", "4",
                          "--num-videos", "4", "--num-davis-videos", "2", "--video-frames", "8"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # every dataset size is a multiple of world x batch (2): each step's two samples come from one pass over the
    # shared shuffled order, so they differ (a step that straddles two passes of an odd-sized set may repeat one)
    records_dir = tmp_path / "records"
    env = {**os.environ, "PROJECT_ROOT": str(project), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=edgetam_distill_video", "debug=quickstart_video",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
         "trainer.sync_batchnorm=false",              # SyncBatchNorm is GPU-only; the rest is trainer=ddp as on GPUs
         f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
         "callbacks.model_checkpoint.every_n_train_steps=2",
         "callbacks.mask_pictures.every_n_steps=2",   # mask pictures (rank 0 only) in the middle of the run
         "data.clip_len=2", "data.max_objects=1", "model.prompts.num_correction_clicks=1",
         "data.val.vos.root=null", "data.val.miou.root=null",
         # all three datasets likely, so "the same dataset on every rank" is tested across datasets
         "data.datasets.sa1b.share=0.34", "data.datasets.davis.weight=1.0",
         "+callbacks.samples._target_=tests.helpers.ddp_sample_recorder.SampleRecorder",
         f"+callbacks.samples.out_dir={records_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((records_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, recs in enumerate(ranks):
        assert [x["step"] for x in recs] == list(range(STEPS)) and {(x["rank"], x["world"]) for x in recs} == {(r, 2)}
    for step, (a, b) in enumerate(zip(*ranks)):
        assert a["dataset"] == b["dataset"], f"step {step}: rank 0 drew {a['dataset']}, rank 1 {b['dataset']}"
        assert a["samples"] != b["samples"], f"step {step}: both ranks trained on {a['samples']}"
    assert len({x["dataset"] for x in ranks[0]}) >= 2, ranks[0]  # the mixture switched datasets within the run

    # one run directory, written by rank 0 only
    runs = project / "logs" / "train"
    assert [p.relative_to(runs).as_posix() for p in runs.glob("*/*")] == ["runs/quickstart_video"]
    run_dir = runs / "runs" / "quickstart_video"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"], ckpts
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    rows = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert len([r for r in rows[1:] if r.split(",")[rows[0].split(",").index("train/loss")]]) == STEPS
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    # rank 1 logs to the console only: Lightning's per-rank line reaches stderr, not the run's log file
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr and "GLOBAL_RANK: 0" in (run_dir / "train.log").read_text()
    assert "GLOBAL_RANK: 1" not in (run_dir / "train.log").read_text()
