"""The bundled tiny model: a 2-layer Qwen3-architecture decoder (vocab 384, hidden 128)
whose config and byte-level tokenizer ship in the package (models/tiny/) and whose random
weights are written on first use, so the runtime, `fuseinfer generate` and `serve` work
with no download, on a CPU too. Its output is fluent in nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..paths import cache_dir
from .config import ModelConfig
from .loader import dummy_state_dict

PACKAGE_DIR = Path(__file__).resolve().parent / "tiny"
FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
SEED = 0


def tiny_model_path() -> Path:
    """A folder with the tiny model's config, tokenizer and weights (made once)."""
    from safetensors.torch import save_file

    dest = cache_dir() / "tiny-model"
    weights = dest / "model.safetensors"
    if weights.exists() and all((dest / f).read_bytes() == (PACKAGE_DIR / f).read_bytes()
                                for f in FILES if (dest / f).exists()):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(PACKAGE_DIR / f, dest / f)
    config = ModelConfig.from_folder(dest)
    state = dummy_state_dict(config, torch.float32, "cpu", SEED)
    tmp = dest / f"model.safetensors.{os.getpid()}.tmp"
    save_file(state, str(tmp))
    tmp.replace(weights)  # atomic: a concurrent first use sees all or nothing
    return dest
