"""Extension modules: one per csrc/<family>, described by csrc/<family>/module.json.

    {"name": "norm", "sources": [{"path": "norm_ops.cu", "flags": ["--use_fast_math"]}],
     "include_dirs": ["common", "norm"], "uses_cutlass": true}

`flags` applies to that file alone; `include_dirs` are relative to csrc/. A source with
`archs` (e.g. ["9.0a"]) is compiled only for those of the build's archs, and left out of a
build that targets none of them (arch-specific CUTLASS kernels). `quick_check: true` marks
the representative sources that `compile_check --quick` compiles in a module that has them
(with its sources that have no `archs`). The JIT loader,
setup.py (FUSEINFER_AOT=1) and CMakeLists.txt all read these files, so the module list
lives in one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..paths import csrc_dir

_FIELDS = {"name", "description", "sources", "include_dirs", "uses_cutlass"}


@dataclass(frozen=True)
class SourceFile:
    path: Path
    flags: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()  # empty: every arch of the build
    quick_check: bool = False

    def build_archs(self, archs: tuple[str, ...]) -> tuple[str, ...]:
        """The archs of a build this file is compiled for (empty: left out)."""
        return tuple(a for a in archs if not self.archs or a in self.archs)


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

    def sources_for(self, archs: tuple[str, ...]) -> tuple[SourceFile, ...]:
        """The sources a build for `archs` compiles."""
        return tuple(s for s in self.sources if s.build_archs(archs))

    def quick_subset(self) -> ModuleSpec:
        """Only the representative sources (and the shared ones), if any are marked."""
        if not any(s.quick_check for s in self.sources):
            return self
        kept = tuple(s for s in self.sources if s.quick_check or not s.archs)
        return replace(self, sources=kept)

    def sources_digest(self) -> str:
        digest = hashlib.sha256()
        for path in self.input_files():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        for source in self.sources:
            digest.update(" ".join(source.flags + ("|",) + source.archs).encode())
        return digest.hexdigest()


def load_spec(path: Path) -> ModuleSpec:
    data = json.loads(path.read_text())
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
    root = path.parent.parent
    for entry in data["sources"]:
        extra = set(entry) - {"path", "flags", "archs", "quick_check"}
        if extra:
            raise ValueError(f"{path}: unknown field(s) {sorted(extra)} in a source entry")
    sources = tuple(
        SourceFile(path.parent / s["path"], tuple(s.get("flags", ())), tuple(s.get("archs", ())),
                   bool(s.get("quick_check", False)))
        for s in data["sources"]
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
