from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

# With no GPU, Triton kernels run in Triton's interpreter on CPU tensors. It is read when a
# kernel module is imported, so it must be set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "python") not in sys.path:
    sys.path.insert(0, str(REPO / "python"))

# FUSEINFER_TRITON_LAUNCH_LOG=PATH: keep every distinct interpreted Triton launch and write
# them to PATH at the end, for fuseinfer.jit.triton_compile_check to compile for a GPU
_write_launches = None
if os.environ.get("FUSEINFER_TRITON_LAUNCH_LOG") and \
        os.environ.get("TRITON_INTERPRET") == "1":
    from fuseinfer.jit.triton_compile_check import record_interpreted_launches

    _write_launches = record_interpreted_launches(os.environ["FUSEINFER_TRITON_LAUNCH_LOG"])


def pytest_sessionfinish(session, exitstatus):
    if _write_launches is not None:
        _write_launches()


# Options that ask pytest-benchmark for numbers; without any, the benchmarks (tests/host_bench)
# run as plain tests: each body once, its asserts checked, nothing timed.
_BENCHMARK_WANTED = ("benchmark_only", "benchmark_enable", "benchmark_json", "benchmark_save",
                     "benchmark_autosave", "benchmark_compare", "benchmark_histogram")


def pytest_configure(config):
    # Runs before pytest-benchmark reads its options (its pytest_configure is trylast).
    option = config.option
    if hasattr(option, "benchmark_disable") and not any(
            getattr(option, name, None) for name in _BENCHMARK_WANTED):
        option.benchmark_disable = True


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different seed per test, so each draws its own data, reproducible by test name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEINFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
