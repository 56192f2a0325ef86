"""Offline Python API:

    from fuseinfer import LLM, SamplingParams
    llm = LLM("/path/to/hf-folder")              # no argument: the bundled tiny model
    LLM("qwen3-0.6b", load_format="dummy")       # bundled config, random weights
    outs = llm.generate(["Hello"], SamplingParams(max_new_tokens=32, temperature=0))
    print(outs[0].text)
    llm.close()                                  # or: with LLM(...) as llm: ...

The caller's garbage collector is left alone unless asked (`gc_freeze=True`,
`gc_warning_threshold_secs=...`, as `fuseinfer serve` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime.sampling import SamplingParams
from .runtime.step_output import FinishReason


@dataclass(frozen=True)
class Completion:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None  # None without a tokenizer
    finish_reason: FinishReason  # a str enum: "stop", "length", "abort", "rejected"
    finish_detail: str | None = None  # why it was rejected


class LLM:
    def __init__(self, model: str | Path | None = None, **engine_args: Any) -> None:
        from .models.bundled import resolve_model
        from .runtime.engine import Engine
        from .runtime.engine_args import EngineArgs
        from .runtime.tokenizer import TextTokenizer

        path = resolve_model(model)
        self.engine = Engine(EngineArgs(model=str(path), **engine_args))
        self.tokenizer = TextTokenizer(path) if (path / "tokenizer.json").exists() else None

    def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[Completion]:
        """Generate for text prompts (needs the model's tokenizer) or token-id prompts."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids: list[list[int]] = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("text prompts need the model folder's tokenizer.json; "
                                     "pass token ids instead")
                ids.append(self.tokenizer.encode(p))
            else:
                ids.append([int(t) for t in p])
        params = sampling_params if sampling_params is not None else SamplingParams()
        outs = self.engine.generate(ids, params)
        return [Completion(o.prompt, o.output,
                           self.tokenizer.decode(o.output) if self.tokenizer else None,
                           o.finish_reason, o.finish_detail) for o in outs]

    def close(self) -> None:
        """Free the engine's device memory (weights, KV cache, CUDA graphs)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
