"""Build cache: one folder per (module, sources, flags, torch, CUDA, arch), and a file lock
so concurrent processes build a module once and never see a half-written library."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import cache_dir


@dataclass(frozen=True)
class BuildKey:
    module: str
    sources_digest: str
    flags: tuple[str, ...]
    torch_version: str
    cuda_version: str
    archs: tuple[str, ...]
    cutlass_version: str

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def folder_name(self) -> str:
        torch_tag = self.torch_version.split("+")[0]
        arch_tag = "-".join(a.replace(".", "") for a in self.archs)
        return f"torch{torch_tag}_cu{self.cuda_version}_sm{arch_tag}_{self.digest()}"


def module_dir(key: BuildKey, root: Path | None = None) -> Path:
    root = cache_dir() if root is None else root
    return root / "jit" / key.module / key.folder_name()


def library_path(key: BuildKey, root: Path | None = None) -> Path:
    return module_dir(key, root) / f"{key.module}.so"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock held for the duration of the block (works across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_once(key: BuildKey, build: Callable[[Path, Path], None], root: Path | None = None
               ) -> tuple[Path, bool]:
    """Return (library, built_now). `build(folder, partial_path)` must write the library to
    `partial_path`; it is renamed into place atomically while the lock is held, so a reader
    that sees the final name always sees a whole file."""
    final = library_path(key, root)
    if final.is_file():
        return final, False
    folder = module_dir(key, root)
    with file_lock(folder.parent / f"{folder.name}.lock"):
        if final.is_file():  # another process finished while we waited
            return final, False
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{key.module}.so.partial"
        build(folder, partial)
        if not partial.is_file():
            raise RuntimeError(f"build of {key.module} produced no {partial}")
        (folder / "build_key.json").write_text(json.dumps(asdict(key), indent=1))
        os.replace(partial, final)
    return final, True


def cached_builds(root: Path | None = None) -> list[dict[str, object]]:
    """Every finished build in the cache, for `fuseinfer info`."""
    root = cache_dir() if root is None else root
    found = []
    for key_file in sorted((root / "jit").glob("*/*/build_key.json")):
        info = json.loads(key_file.read_text())
        library = key_file.parent / f"{info['module']}.so"
        info["path"] = str(library)
        info["complete"] = library.is_file()
        found.append(info)
    return found
