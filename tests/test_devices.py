"""The shared helpers of low modules: dtype and device names, phase timing."""

import time

import pytest
import torch

from diffedit.devices import auto_dtype, parse_dtype, resolve_device
from diffedit.timing import timed


def test_parse_dtype_names_and_dtypes():
    assert parse_dtype("fp32") is torch.float32 and parse_dtype("fp16") is torch.float16
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    assert parse_dtype(torch.bfloat16) is torch.bfloat16 and parse_dtype(None) is None
    for bad in ("fp8", "cuda", ""):
        with pytest.raises(ValueError, match="fp32, fp16, bf16"):
            parse_dtype(bad)


def test_resolve_device_and_auto_dtype():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:1")
    assert auto_dtype("cpu") == "fp32" and auto_dtype("cuda:0") == "fp16" and auto_dtype(torch.device("cuda")) == "fp16"


def test_timed_adds_up_per_name():
    timings = {"mask": 1.0}
    with timed(timings, "mask"):
        time.sleep(0.01)
    with timed(timings, "other", torch.device("cpu")):
        pass
    assert timings["mask"] >= 1.01 and 0 <= timings["other"] < 1.0
