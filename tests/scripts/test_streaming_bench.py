"""``scripts/bench/streaming.py`` (issue 29's latency and memory report): a short torch stream gives the table row and
the two goal rows per runtime, and ``--doc`` writes one section per size and runtime set, keeping the sections of
other runs (the 256² 10,000-frame and 1024² 2,000-frame runs sit side by side in docs/benchmarks.md); ``--reference``
adds the noise-floor probe (the same encoder call on the same frame, interleaved with the tracker)."""

from __future__ import annotations

import json
import re

import run_all
import streaming


def test_short_stream_writes_its_own_section_and_keeps_the_others(tmp_path):
    doc, rows = tmp_path / "benchmarks.md", tmp_path / "streaming.json"
    run_all.update_section(doc, "streaming-1024-torch", "## Streaming tracking: torch at 1024²\n\nan earlier run\n")
    streaming.main(["--frames", "24", "--size", "256", "--runtimes", "torch", "--reference", "--doc", str(doc),
                    "--json", str(rows)])
    text = doc.read_text()
    assert "<!-- streaming-1024-torch:begin -->\n## Streaming tracking: torch at 1024²\n\nan earlier run\n" in text
    section = re.search(r"<!-- streaming-256-torch:begin -->\n(.*?)<!-- streaming-256-torch:end -->", text, re.S)
    assert section is not None, text
    body = section.group(1)
    assert body.startswith("## Streaming tracking (`streaming.py`): torch at 256²\n")
    assert "`python scripts/bench/streaming.py --frames 24 --size 256 --runtimes torch" in body
    assert "24 frames at 256x256, one object, 1 CPU thread(s)" in body
    assert "RSS MB at 12 / 24 frames" in body  # half a stream shorter than 1000 frames is the reference
    row = next(line for line in body.splitlines() if line.startswith("| torch |")).split("|")[2:-1]
    p50, p90, p99 = (float(v) for v in row[:3])
    assert 0 < p50 <= p90 <= p99
    cpu = re.fullmatch(r" ([\d.]+) / ([\d.]+) \(([\d.]+)\) ", row[4])  # the calling thread's CPU time per frame
    assert cpu is not None and 0 < float(cpu[1]) <= float(cpu[2]), row[4]
    assert int(row[6]) >= 0  # median minor page faults per frame
    floor = next(line for line in body.splitlines() if line.startswith("| torch | ") and line.count("|") == 8)
    reps, probe_p50, probe_ratio, track_ratio, relative, corr = (float(v) for v in floor.split("|")[2:-1])
    # the probe repeats the encoder (part of each frame) until it lasts about a frame
    assert reps >= 1 and 0.3 * float(cpu[1]) < probe_p50 < 3 * float(cpu[1]), floor
    assert probe_ratio >= 1 and track_ratio == float(cpu[3])
    assert abs(relative - track_ratio / probe_ratio) <= 0.02  # all three printed rounded to 0.01
    assert -1 <= corr <= 1
    assert re.search(r"load average \d+\.\d\d at the start and \d+\.\d\d at the end", body)
    goals = json.loads(rows.read_text())
    assert [g["name"] for g in goals] == ["streaming torch: p99/p50 per-frame latency, 24 frames at 256²",
                                          "streaming torch: RSS growth from frame 12 to 24"]
    assert goals[0]["value"] == round(p99 / p50, 2)
    assert f"same-input encoder (noise floor) {probe_ratio:.2f}" in goals[0]["detail"]
