"""The exported README's app loop: the per-object state an app keeps while streaming, in bytes (EdgeTAM at 1024 px:
512 memory tokens x 64 float32 per frame, 7 memory frames with the conditioning one, 16 pointers, 256 x 256
logits), and where the reference loop to port lives."""

from __future__ import annotations

from edgetam_train.export.manifest import app_loop


def test_app_loop_sizes_at_1024():
    manifest = {"image_size": 1024, "format": "onnx",
                "tracking": {"num_maskmem": 7, "max_obj_ptrs_in_encoder": 16},
                "parts": {"memory_attention": {"inputs": [{"name": "memory", "shape": [1, 22, 512, 64]}]}}}
    text = "\n".join(app_loop(manifest))
    assert "## App loop (streaming camera frames)" in text
    assert "512 x 64 float32 = 131,072 B" in text and "last 6 tracked frames (786,432 B)" in text
    assert "last 15 tracked frames (15,360 B)" in text and "256 x 256 float32 = 262,144 B" in text
    assert f"One object prompted once: {7 * 131072 + 16 * 1024 + 262144:,} B at 1024 px" in text
    assert "--runtime onnx" in text and "`edgetam_train/runtime/app_loop.py` (`AppTracker`)" in text
