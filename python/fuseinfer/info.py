"""`fuseinfer info`: what this machine is, which dispatch choices apply, what can build."""

from __future__ import annotations

from typing import Any

from .dispatch import current_identity, family_key, gpu_key, lookup, registered_ops
from .dispatch.schema import to_json
from .jit.cache import cached_builds
from .jit.loader import loaded_modules
from .jit.module_spec import all_specs
from .jit.toolkit import probe
from .paths import cache_dir, prebuilt_dir, tables_dir


def gather() -> dict[str, Any]:
    import torch

    import fuseinfer

    identity = current_identity()
    report: dict[str, Any] = {
        "fuseinfer": fuseinfer.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": None,
        "tables_dir": str(tables_dir()),
        "ops": {},
        "toolkit": probe(),
        "cache_dir": str(cache_dir()),
        "cached_builds": cached_builds(),
        "prebuilt": sorted(p.name for p in prebuilt_dir().glob("*.so")),
        "modules": sorted(all_specs()),
        "loaded": {k: str(v.path) for k, v in loaded_modules().items()},
    }
    if identity is not None:
        report["device"] = {
            "name": identity.name, "compute_capability": identity.compute_capability,
            "sm_count": identity.sm_count, "memory_gib": round(identity.memory_gib, 1),
            "key": gpu_key(identity), "family": family_key(identity),
            "pdl_supported": identity.supports_pdl,
        }
    for op in registered_ops():
        choice = lookup(op, identity)
        report["ops"][op] = {"table": choice.table_key, "path": choice.path,
                             "source": choice.source, "entry": to_json(choice.entry)}
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"fuseinfer {report['fuseinfer']}  torch {report['torch']} "
             f"(CUDA {report['torch_cuda'] or 'none: CPU-only build'})"]
    dev = report["device"]
    if dev is None:
        lines.append("device: no CUDA GPU visible; ops run through their CPU reference "
                     "implementations, tables fall back to the built-in defaults")
    else:
        lines.append(f"device: {dev['name']}  cc {dev['compute_capability']}  "
                     f"{dev['sm_count']} SMs  {dev['memory_gib']} GiB  key {dev['key']} "
                     f"(family {dev['family']})  PDL "
                     f"{'supported' if dev['pdl_supported'] else 'not supported'}")
    lines.append(f"dispatch tables: {report['tables_dir']}")
    for op, choice in report["ops"].items():
        where = choice["path"] or "built-in default"
        lines.append(f"  {op}: {where}  [{choice['source']}]")
        entry = choice["entry"]
        for name, value in entry.items():  # scalar settings (enable_pdl, split sizes, ...)
            if name != "source" and not name.endswith("rules"):
                lines.append(f"    {name}: {value}")
        for name, rules in entry.items():
            if name.endswith("rules"):
                lines.append(f"    {name}:")
                lines += ["      " + ", ".join(f"{k}={v}" for k, v in rule.items())
                          for rule in rules]
    lines.append("toolkit:")
    lines += [f"  {name}: {value}" for name, value in report["toolkit"].items()]
    lines.append(f"CUDA modules: {', '.join(report['modules'])}")
    lines.append(f"build cache: {report['cache_dir']} ({len(report['cached_builds'])} builds)")
    for build in report["cached_builds"]:
        lines.append(f"  {build['module']}: torch {build['torch_version']} CUDA "
                     f"{build['cuda_version']} sm {'/'.join(build['archs'])} -> {build['path']}")
    lines.append(f"prebuilt (AOT): {', '.join(report['prebuilt']) or 'none'}")
    if report["loaded"]:
        lines.append("loaded: " + ", ".join(f"{k} ({v})" for k, v in report["loaded"].items()))
    return "\n".join(lines)
