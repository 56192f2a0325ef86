"""What every `fuseinfer tune <suite>` shares: the GPU it tunes, the table file it writes
(--output, default <gpu-key>.json in the tables folder `fuseinfer info` shows) and the
timing log (--log)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def add_tune_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path,
                        help="table file to update (default: <gpu-key>.json in the tables "
                        "folder that `fuseinfer info` shows)")
    parser.add_argument("--log", type=Path, help="write every timing taken as JSON")


@dataclass(frozen=True)
class TuneTarget:
    """The present GPU and where its tuned entries go."""

    identity: Any  # dispatch.GpuIdentity
    device: int  # CUDA device index
    key: str  # its dispatch-table key
    output: Path

    def source(self, details: str, dtypes: str = "bf16") -> str:
        """A tuned entry's `source`: what (the dtypes timed), where and when it was tuned."""
        import torch

        from .environment import utc_now

        return f"tuned on {self.identity.name} {utc_now()[:10]} ({dtypes}, torch " \
            f"{torch.__version__}{details})"

    def write(self, family: str, entry: Any) -> None:
        from ..dispatch import write_entry

        write_entry(self.output, family, entry, key=self.key, description=self.identity.name)


def tune_target(args: argparse.Namespace) -> TuneTarget:
    import torch

    from ..dispatch import current_identity, gpu_key
    from ..paths import tables_dir

    identity = current_identity()
    if identity is None:
        raise SystemExit("no CUDA GPU found: tuning needs one.")
    key = gpu_key(identity)
    return TuneTarget(identity, torch.cuda.current_device(), key,
                      args.output or tables_dir() / f"{key}.json")


def write_tune_log(path: Path | None, source: str, log: list[dict[str, Any]]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": source, "timings": log}, indent=1))
