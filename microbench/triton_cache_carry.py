"""Carry Triton's compile cache between device calls, as the JIT caches are carried: a fresh
machine otherwise compiles every Triton kernel again (about 4 s apiece; most of the
attention GPU tests' four minutes).

  python3 microbench/triton_cache_carry.py restore TGZ DIR
  python3 microbench/triton_cache_carry.py pack DIR TGZ [--cap-mb 24]

Only what a cache hit reads travels: each kernel's metadata JSON, its group file and its
cubin, and the compiled launchers (.so); the IR text stays behind. Triton's group files
name their members by absolute path, so DIR must be the same path on every call
(device_run.sh uses /tmp/triton-cache). pack keeps whole kernel folders, newest first, up
to --cap-mb uncompressed (cubins pack about 4x smaller); restore dates what it unpacks to
2000-01-01, so kernels built in this call come first at the next pack and kernels no
longer built age out."""

from __future__ import annotations

import argparse
import os
import tarfile
from pathlib import Path

CARRIED = (".cubin", ".json", ".so")
RESTORED_MTIME = 946684800  # 2000-01-01


def restore(tgz: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(cache, filter="data")
    n = 0
    for f in cache.rglob("*"):
        if f.is_file():
            os.utime(f, (RESTORED_MTIME, RESTORED_MTIME))
            n += 1
    print(f"triton cache: restored {n} files into {cache}")


def pack(cache: Path, tgz: Path, cap_mb: float) -> None:
    folders = []
    for d in (p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else ():
        files = [f for f in d.iterdir() if f.is_file() and f.suffix in CARRIED]
        if files:
            stats = [f.stat() for f in files]
            folders.append((max(s.st_mtime for s in stats), sum(s.st_size for s in stats),
                            files))
    folders.sort(key=lambda t: t[0], reverse=True)
    cap, total, kept = cap_mb * 2**20, 0, []
    for _, size, files in folders:
        if total + size > cap:
            continue
        total += size
        kept += files
    with tarfile.open(tgz, "w:gz") as tar:
        for f in kept:
            tar.add(f, arcname=str(f.relative_to(cache)))
    packed = tgz.stat().st_size / 2**20
    print(f"triton cache: {len({f.parent for f in kept})} of {len(folders)} kernel folders, "
          f"{total / 2**20:.1f} MB -> {packed:.1f} MB in {tgz}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("restore")
    r.add_argument("tgz", type=Path)
    r.add_argument("cache", type=Path)
    p = sub.add_parser("pack")
    p.add_argument("cache", type=Path)
    p.add_argument("tgz", type=Path)
    p.add_argument("--cap-mb", type=float, default=24.0)
    args = parser.parse_args()
    if args.command == "restore":
        restore(args.tgz, args.cache)
    else:
        pack(args.cache, args.tgz, args.cap_mb)


if __name__ == "__main__":
    main()
