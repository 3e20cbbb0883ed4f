"""The Dockerfile stays in step with pyproject.toml: same torch/torchvision pins, entry point train.py."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def pins(text: str) -> dict[str, str]:
    return {name: version for name, version in re.findall(r"\b(torch|torchvision)==([0-9][0-9.]*)", text)}


def test_docker_pins_equal_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = pins(" ".join(deps))
    assert set(wanted) == {"torch", "torchvision"}, "pyproject.toml must pin torch and torchvision with =="
    assert pins((REPO / "Dockerfile").read_text()) == wanted


def test_docker_runs_train_py_and_copies_what_it_needs():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r'ENTRYPOINT \["python", "train.py"\]', text)
    for path in ("edgetam_train", "configs", "train.py"):
        assert re.search(rf"COPY {re.escape(path)}\b", text), f"Dockerfile does not copy {path}"
        assert (REPO / path).exists()


def test_hadolint_clean():
    """hadolint (a dev dependency) reports nothing at warning level or above."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([exe, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
