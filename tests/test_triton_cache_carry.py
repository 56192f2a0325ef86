"""Carrying Triton's compile cache between device calls (microbench/triton_cache_carry.py),
on a fake cache: what travels, the size cap, newest first, whole kernel folders, and the
restored files' age."""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "microbench" / "triton_cache_carry.py"
spec = importlib.util.spec_from_file_location("triton_cache_carry", SCRIPT)
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)


def kernel(cache: Path, name: str, cubin_kb: int, mtime: float) -> None:
    d = cache / name
    d.mkdir(parents=True)
    files = {f"__grp__{name}.json": 1, f"{name}.json": 1, f"{name}.cubin": cubin_kb,
             f"{name}.ptx": 3 * cubin_kb, f"{name}.ttir": 2}
    for file, kb in files.items():
        (d / file).write_bytes(os.urandom(kb * 1024))
        os.utime(d / file, (mtime, mtime))


def test_pack_keeps_whole_newest_folders_under_the_cap_and_only_what_a_hit_reads(tmp_path):
    cache = tmp_path / "cache"
    kernel(cache, "old", 400, 1000.0)
    kernel(cache, "big", 900, 3000.0)   # newest, but alone past the cap
    kernel(cache, "new", 500, 2000.0)
    launcher = cache / "launcher"
    launcher.mkdir()
    (launcher / "__triton_launcher.cpython-312-x86_64-linux-gnu.so").write_bytes(b"x" * 10)
    os.utime(launcher / "__triton_launcher.cpython-312-x86_64-linux-gnu.so", (2500.0, 2500.0))
    tgz = tmp_path / "c.tgz"
    carry.pack(cache, tgz, cap_mb=0.85)
    with tarfile.open(tgz) as tar:
        names = sorted(tar.getnames())
    # big (902 KB) passes the 870 KB cap alone and is skipped whole; the launcher and new
    # fit (newest first), then old would pass the cap; no IR text travels
    assert names == ["launcher/__triton_launcher.cpython-312-x86_64-linux-gnu.so",
                     "new/__grp__new.json", "new/new.cubin", "new/new.json"]


def test_restore_unpacks_and_dates_everything_before_this_call(tmp_path):
    cache = tmp_path / "cache"
    kernel(cache, "k", 10, 5e9)
    tgz = tmp_path / "c.tgz"
    carry.pack(cache, tgz, cap_mb=1)
    out = tmp_path / "restored"
    carry.restore(tgz, out)
    files = sorted(p.name for p in (out / "k").iterdir())
    assert files == ["__grp__k.json", "k.cubin", "k.json"]
    assert (out / "k" / "k.cubin").read_bytes() == (cache / "k" / "k.cubin").read_bytes()
    assert {(out / "k" / f).stat().st_mtime for f in files} == {carry.RESTORED_MTIME}
