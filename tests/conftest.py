import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny_model, tiny_components  # noqa: E402

from diffedit import DiffEditor  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models gain nothing from threads; 2 threads on a busy 2-core box are 30x slower


@pytest.fixture
def editor() -> DiffEditor:
    return DiffEditor.from_components(tiny_components(), progress=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def scene(width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """A gray canvas with a red square: structure for the VAE and UNet to react to."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 128, np.uint8)
    img[height // 4 : height // 2, width // 4 : width // 2] = (220, 50, 50)
    img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    return img


@pytest.fixture
def image() -> np.ndarray:
    return scene()


# ---------------------------------------------------------------- fuzz accounting (tests/test_fuzz.py)
# Every fuzz test records each input it tries (hashed, so repeats count once) and each problem it finds; the
# summary line at the end of the run says how many distinct inputs were tried, in how long, with what result.
FUZZ_INPUTS: dict[str, set[str]] = {}
FUZZ_PROBLEMS = {"tracebacks": 0, "partial files": 0}
FUZZ_SECONDS = [0.0]


def fuzz_seen(kind: str, key) -> None:
    """Record one input of a fuzz test (`key`: anything with a stable repr that tells inputs apart)."""
    import hashlib

    FUZZ_INPUTS.setdefault(kind, set()).add(hashlib.sha1(repr(key).encode("utf-8", "backslashreplace")).hexdigest())


def fuzz_problem(kind: str) -> None:
    FUZZ_PROBLEMS[kind] += 1


def pytest_runtest_logreport(report):
    if "test_fuzz.py" in report.nodeid:
        FUZZ_SECONDS[0] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not FUZZ_INPUTS:
        return
    total = sum(len(v) for v in FUZZ_INPUTS.values())
    kinds = ", ".join(f"{k} {len(v)}" for k, v in sorted(FUZZ_INPUTS.items()))
    problems = ", ".join(f"{n} {k}" for k, n in FUZZ_PROBLEMS.items())
    terminalreporter.write_line(f"fuzz: {total} distinct inputs ({kinds}) in {FUZZ_SECONDS[0]:.1f} s; {problems}")
