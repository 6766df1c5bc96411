"""tools/device_train.sh, the recipe for training on a lent GPU machine, run here on CPU with the tiny config.

A GPU call brings back at most 8 files of 16 MiB, so the script ships the fp16 model folder as split
tar parts, and a second call continues the UNet from that folder alone. This runs both calls.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import diffedit

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "device_train.sh"


def _call(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    out.mkdir()
    env = dict(
        os.environ, OUT=str(out), CONFIG="tiny", DEVICE="cpu", EVAL_CAPTIONS="2", EVAL_SCENES="2",
        WORK=str(tmp_path / f"work_{name}"), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        PYTHONPATH=str(Path(diffedit.__file__).resolve().parents[1]),  # the checkout under test, from any cwd
    )
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.mark.slow  # two training calls of the tiny config and their evaluation: ~30 s
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_two_calls_through_the_file_limits(tmp_path):
    first = _call(tmp_path, "first", "0.05", "--", "--quiet")
    files = sorted(p.name for p in first.iterdir())
    assert len(files) <= 8 and all((first / f).stat().st_size <= 16 * 2**20 for f in files)
    assert "evaluate.json" in files and "samples.png" in files and "train.log" in files
    back = tmp_path / "back"
    back.mkdir()
    parts = sorted(first.glob("model.tar.part-*"))
    assert parts
    joined = tmp_path / "model.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        tar.extractall(back, filter="data")
    steps = json.loads((back / "model" / "training.json").read_text())["unet_steps"]
    assert steps >= 1

    second = _call(tmp_path, "second", "0.05", str(back), "--", "--quiet")
    info = json.loads((tmp_path / "work_second" / "model" / "training.json").read_text())
    assert info["unet_steps"] > steps and [h["stage"] for h in info["stages"]] == ["vae", "unet", "unet"]
    figures = json.loads((second / "evaluate.json").read_text())
    assert 0.0 <= figures["generation_accuracy"]["overall"] <= 1.0 and figures["vae_psnr_db"] > 0
