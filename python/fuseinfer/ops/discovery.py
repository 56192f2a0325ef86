"""How fuseinfer.ops finds its ops: a family package imports every module in it (an op
module registers its schemas when imported; commands such as the compile checks are left
out), and fuseinfer.ops re-exports the names each of those modules lists in `__all__`. A
new op is a new file in its family's package, a new family a new package; neither edits a
list here or in any __init__."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import Any

# modules that are commands (`python -m ...`), not ops: imported with their package, runpy
# would warn that the module it is about to run was imported already
COMMAND_SUFFIX = "_compile_check"


def import_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every public module and subpackage of `package` (name order), except the
    commands (names ending in COMMAND_SUFFIX); their names. They stay attributes of the
    package as modules: an op module named after its op is not shadowed by the op's
    function."""
    names = sorted(info.name for info in pkgutil.iter_modules(path)
                   if not info.name.startswith("_") and not info.name.endswith(COMMAND_SUFFIX))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def export_ops(package: str, path: Iterable[str], namespace: dict[str, Any]) -> list[str]:
    """Import every family subpackage of `package` and put into `namespace` each family
    and every name its modules list in `__all__`; returns the names put there. Two
    modules exporting one name is an error."""
    families = sorted(info.name for info in pkgutil.iter_modules(path)
                      if info.ispkg and not info.name.startswith("_"))
    exported = list(families)
    owner: dict[str, str] = {}
    for family in families:
        package_module = importlib.import_module(f"{package}.{family}")
        namespace[family] = package_module
        modules = [getattr(package_module, n) for n in package_module.__all__]
        for module in (m for m in modules if isinstance(m, ModuleType)):
            for name in getattr(module, "__all__", ()):
                if name in owner or name in families:
                    raise ImportError(f"{package}: {name} is exported by {module.__name__} "
                                      f"and by {owner.get(name, 'a family')}")
                owner[name] = module.__name__
                namespace[name] = getattr(module, name)
                exported.append(name)
    return exported
