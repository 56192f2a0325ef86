"""Extension modules: one per csrc/<family>, described by csrc/<family>/module.json.

    {"name": "norm", "sources": [{"path": "norm_ops.cu", "flags": ["--use_fast_math"]}],
     "include_dirs": ["common", "norm"], "uses_cutlass": true}

`flags` applies to that file alone; `include_dirs` are relative to csrc/. The JIT loader,
setup.py (FUSEINFER_AOT=1) and CMakeLists.txt all read these files, so the module list
lives in one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..paths import csrc_dir

_FIELDS = {"name", "description", "sources", "include_dirs", "uses_cutlass"}


@dataclass(frozen=True)
class SourceFile:
    path: Path
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    sources: tuple[SourceFile, ...]
    include_dirs: tuple[Path, ...]
    uses_cutlass: bool
    description: str = ""

    def input_files(self) -> list[Path]:
        """Every file whose content the build depends on (sources and headers)."""
        files = {s.path for s in self.sources}
        for folder in self.include_dirs:
            files.update(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".json")
        return sorted(files)

    def sources_digest(self) -> str:
        digest = hashlib.sha256()
        for path in self.input_files():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        for source in self.sources:
            digest.update(" ".join(source.flags).encode())
        return digest.hexdigest()


def load_spec(path: Path) -> ModuleSpec:
    data = json.loads(path.read_text())
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
    root = path.parent.parent
    for entry in data["sources"]:
        extra = set(entry) - {"path", "flags"}
        if extra:
            raise ValueError(f"{path}: unknown field(s) {sorted(extra)} in a source entry")
    sources = tuple(
        SourceFile(path.parent / s["path"], tuple(s.get("flags", ()))) for s in data["sources"]
    )
    for source in sources:
        if not source.path.is_file():
            raise ValueError(f"{path}: source {source.path} does not exist")
    return ModuleSpec(
        name=data["name"],
        sources=sources,
        include_dirs=tuple(root / d for d in data.get("include_dirs", [path.parent.name])),
        uses_cutlass=bool(data.get("uses_cutlass", False)),
        description=data.get("description", ""),
    )


def all_specs(root: Path | None = None) -> dict[str, ModuleSpec]:
    root = csrc_dir() if root is None else root
    specs = [load_spec(p) for p in sorted(root.glob("*/module.json"))]
    return {s.name: s for s in specs}


def get_spec(name: str) -> ModuleSpec:
    specs = all_specs()
    if name not in specs:
        raise KeyError(f"no CUDA module '{name}' (known: {sorted(specs)}) in {csrc_dir()}")
    return specs[name]
