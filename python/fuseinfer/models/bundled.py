"""Model names that resolve to folders shipped in the package: the tiny model (config,
tokenizer; weights made on first use) and the configs of Qwen3-0.6B, Qwen3-8B (also its
FP8 block-quantized variant, qwen3-8b-fp8), Qwen3-30B-A3B (MoE: 128 experts, 8 per token),
Llama-3.1-8B, GPT-OSS-20B and GPT-OSS-120B (MXFP4 experts) (from their published
config.json; no weights or tokenizer, so they run with `load_format="dummy"` and token-id
prompts, for benchmarks)."""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_ONLY = ("qwen3-0.6b", "qwen3-8b", "qwen3-8b-fp8", "qwen3-30b-a3b", "llama-3.1-8b",
               "gpt-oss-20b", "gpt-oss-120b")


def resolve_model(model: str | Path | None) -> Path:
    """A model folder for a path, a bundled name, or None (the tiny model)."""
    from .tiny_model import tiny_model_path

    if model is None or str(model).lower() == "tiny":
        return tiny_model_path()
    name = str(model).lower()
    if name in CONFIG_ONLY and not Path(model).exists():
        return CONFIGS_DIR / name
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder; bundled names: tiny, "
                                f"{', '.join(CONFIG_ONLY)}")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json); bundled "
                                f"names: tiny, {', '.join(CONFIG_ONLY)}")
    return path


def require_weights(folder: Path, load_format: str) -> None:
    """Raise FileNotFoundError, saying what to do, when `folder` has no weights to load."""
    if load_format == "dummy" or any(folder.glob("*.safetensors")):
        return
    what = f"the bundled {folder.name} is config-only" if folder.parent == CONFIGS_DIR \
        else f"{folder} has no weights (*.safetensors)"
    raise FileNotFoundError(f"{what}: add --load-format dummy to run it with random weights")
