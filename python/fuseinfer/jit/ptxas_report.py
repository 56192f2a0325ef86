"""Per-kernel resources from ptxas's `-v` report: registers, shared memory and spills, and
the one-line summary per module that the compile check prints."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


@dataclass(frozen=True)
class KernelResources:
    name: str  # mangled
    registers: int
    smem_bytes: int
    spill_stores: int
    spill_loads: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    def line(self) -> str:
        spill = f"  SPILLS {self.spill_stores} B stored, {self.spill_loads} B loaded" \
            if self.spills else ""
        return f"{self.registers:>3} regs {self.smem_bytes:>6} B smem  {self.name}{spill}"


@dataclass(frozen=True)
class ModuleReport:
    module: str
    kernels: tuple[KernelResources, ...]
    other_spill_bytes: int = 0  # spills reported outside an entry function's record

    def spilling(self) -> list[str]:
        names = [k.name for k in self.kernels if k.spills]
        return names + ["a device function"] if self.other_spill_bytes else names

    def summary(self) -> str:
        if not self.kernels:
            return f"{self.module}: no kernels reported"
        regs = max(k.registers for k in self.kernels)
        smem = max(k.smem_bytes for k in self.kernels)
        spills = self.spilling()
        verdict = f"{len(spills)} kernels spill registers" if spills else "no spills"
        return (f"{self.module}: {len(self.kernels)} kernels, at most {regs} registers and "
                f"{smem} B shared memory, {verdict}")

    def details(self) -> list[str]:
        return [k.line() for k in self.kernels]

    def to_json(self) -> dict:
        return {"module": self.module, "kernels": [asdict(k) for k in self.kernels],
                "other_spill_bytes": self.other_spill_bytes}

    @classmethod
    def from_json(cls, data: dict) -> ModuleReport:
        return cls(data["module"], tuple(KernelResources(**k) for k in data["kernels"]),
                   data["other_spill_bytes"])


def parse_ptxas(module: str, log: str) -> ModuleReport:
    """The kernels of a build log compiled with `-Xptxas -v`. A kernel's spill line comes
    before its register line; a register line closes the kernel's record."""
    kernels = []
    name = None
    stores = loads = other = 0
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            name, stores, loads = m.group(1), 0, 0
        elif m := _SPILLS.search(line):
            if name is None:
                other += int(m.group(1)) + int(m.group(2))
            else:
                stores, loads = stores + int(m.group(1)), loads + int(m.group(2))
        elif (m := _USED.search(line)) and name is not None:
            kernels.append(KernelResources(name, int(m.group(1)), int(m.group(2) or 0),
                                           stores, loads))
            name, stores, loads = None, 0, 0
    return ModuleReport(module, tuple(kernels), other)
