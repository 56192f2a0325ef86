"""Public op surface: importing this registers every torch.ops.fuseinfer.* schema.

One package per op family (norm, rope, kvcache, attention, activation, linear, sampling,
...); each holds its ops' schema, CPU reference, fake impl, checks, dispatch entry and
launcher, in files named after the ops. Every family package is imported, and every name
an op module lists in `__all__` is exported here (discovery.py): adding an op edits no
list.
"""

from __future__ import annotations

from .discovery import export_ops

__all__ = export_ops(__name__, __path__, globals())
