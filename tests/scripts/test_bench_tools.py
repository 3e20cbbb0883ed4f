"""Benchmark tooling on the CPU: the FLOP count of a stage-1 step that ``gpu_profile.py`` divides by the GPU's peak
(teacher forward + student forward/backward, counted with FlopCounterMode), the peak table, the script's behaviour
without CUDA, its ``--device cpu`` run of both stages (rows, PASS/FAIL lines, docs section), and ``run_all.py``'s
section bookkeeping in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

import gpu_profile
import pytest
import run_all  # noqa: E402
import torch
from lightning.fabric.utilities.throughput import measure_flops
from teacher_cache import build_module, step_flops, synthetic_batch  # noqa: E402

from edgetam_train.distill import cache_teacher  # noqa: E402
from edgetam_train.distill.teacher import FrozenTeacher

REPO = Path(__file__).resolve().parents[2]

SIZE = 256


def test_step_flops_are_teacher_forward_plus_student_forward_and_backward():
    teacher = FrozenTeacher(cache_teacher.build_teacher("sam2.1_hiera_t", SIZE, None, 0), allow_random_init=True)
    module = build_module(SIZE, teacher, clicks=1)
    one, two = synthetic_batch(SIZE, 1), synthetic_batch(SIZE, 2)
    live, cached, cached_two = (step_flops(module, one, teacher), step_flops(module, one, None),
                                step_flops(module, two, None))
    with torch.no_grad():
        teacher_fwd = measure_flops(teacher.net, lambda: teacher.encode_image(one["images"]))
    encoder_fwd = measure_flops(module.student, lambda: module.student.encode_image(one["images"]).f16)
    assert live - cached == teacher_fwd > 0  # the teacher is counted once, forward only
    assert cached > 2.5 * encoder_fwd  # the student's encoder forward + backward (about 2x) + the decoder passes
    assert cached_two > cached  # every mask adds its decoder passes
    assert all(p.grad is None for p in module.student.parameters())  # counting leaves no gradients behind


def test_peak_table_by_device_name():
    assert gpu_profile.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_profile.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_profile.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert gpu_profile.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_profile.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_profile.peak_tflops("Some Other GPU") is None
    assert gpu_profile.peak_tflops("NVIDIA H100 80GB HBM3", override=500.0) == 500.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed where CUDA is absent")
def test_gpu_profile_without_cuda_exits_with_a_message(capsys, tmp_path):
    assert gpu_profile.main(["--doc", str(tmp_path / "b.md")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "b.md").exists()


@pytest.mark.slow  # ~2-5 min on 2 cores (four rows, each checked against a memory-plan trace): make test-all
def test_gpu_profile_cpu_run_profiles_both_stages_and_writes_its_section(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    rows = [{"name": "x: a/b", "value": 0.5, "unit": "x", "goal": "<= 1", "passed": True, "detail": "",
             "bench": "x", "seconds": 1.0, "date": "2026-01-01", "quick": False}]
    run_all.update_section(doc, "run_all", run_all.render(rows, {"CPU": "test"}, "python run_all.py"))
    out = tmp_path / "rows.json"
    args = ["--device", "cpu", "--image-size", str(SIZE), "--teacher", "sam2.1_hiera_t", "--batch-size", "1",
            "--masks", "1", "--clicks", "0", "--clips", "1", "--frames", "2", "--objects", "1", "--steps", "1",
            "--warmup", "0", "--peak-tflops", "1", "--doc", str(doc), "--json", str(out)]
    assert gpu_profile.main(args) == 0
    printed = capsys.readouterr().out
    names = ["stage 1, live teacher", "stage 1, cached F16", "stage 1, live teacher, direct mask loss",
             "stage 2, clip step"]
    for name in names:  # a throughput line and a memory line with its verdict per row
        assert f"gpu_profile {name}: " in printed and f"gpu_profile {name}: peak " in printed, name
        verdict = printed.split(f"gpu_profile {name}: peak ")[1].splitlines()[0]
        assert verdict.endswith(": PASS") and " vs plan <= " in verdict, verdict
    assert "clips/s (" in printed and "frames/s)" in printed and "gpu_profile: 4/4 rows PASS" in printed
    assert doc.read_text().count("<!-- gpu_profile:begin -->") == 1
    section = run_all.read_section(doc, "gpu_profile")
    assert all(f"| {name} |" in section for name in names) and section.count("| PASS |") == 4
    assert run_all.previous_rows(doc) == rows  # the run_all section is untouched
    written = json.loads(out.read_text())
    assert [r["unit"] for r in written] == ["img/s", "img/s", "img/s", "clips/s"] and all(r["passed"] for r in written)
    assert gpu_profile.main(args + ["--stages", "video"]) == 0  # one stage alone; its section is replaced
    assert doc.read_text().count("<!-- gpu_profile:begin -->") == 1 and "| stage 1" not in doc.read_text()


def test_gpu_profile_fails_a_row_whose_peak_exceeds_the_plan(monkeypatch, capsys, tmp_path):
    real_estimate = gpu_profile.estimate

    def small_plan(job, fake=True, built=None):  # the plan (fake trace) a tenth of the truth: every row must FAIL
        r = real_estimate(job, fake, built)
        return {**r, "peak": r["peak"] / 10, "static": r["static"] / 10} if fake else r

    monkeypatch.setattr(gpu_profile, "estimate", small_plan)
    args = ["--device", "cpu", "--stages", "video", "--image-size", str(SIZE), "--teacher", "sam2.1_hiera_t",
            "--clips", "1", "--frames", "2", "--objects", "1", "--steps", "1", "--warmup", "0", "--no-doc"]
    assert gpu_profile.main(args) == 1
    printed = capsys.readouterr().out
    assert "gpu_profile stage 2, clip step: peak " in printed and printed.count(": FAIL") == 1
    assert "gpu_profile: 0/1 rows PASS; FAIL: stage 2, clip step" in printed


def test_gpu_profile_rejects_an_unknown_stage(capsys):
    assert gpu_profile.main(["--device", "cpu", "--stages", "audio"]) == 2
    assert "--stages must list image and/or video" in capsys.readouterr().err


def test_run_all_discovers_every_bench_script():
    names = run_all.discover()
    assert {"loader", "model_speed", "step_overhead", "clip_memory", "teacher_cache"} <= set(names)
    assert "run_all" not in names and ("gpu_profile" in names) == torch.cuda.is_available()
    for name in names:  # each one writes rows for the table
        assert "--json" in (REPO / "scripts" / "bench" / f"{name}.py").read_text(), name
