from __future__ import annotations

from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # The hook sees the whole session: mark only the tests of this folder.
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(autouse=True)
def _require_cuda():
    if not torch.cuda.is_available():
        pytest.fail("the GPU suite needs a CUDA GPU (run it with `pytest -m gpu` on one)")
    torch.manual_seed(0)
