"""How fuseinfer.ops finds its ops: every family package's modules are imported and every
op module's __all__ is exported, so a new op file is found with no list edited."""

from __future__ import annotations

import textwrap
import types

import pytest
import torch

import fuseinfer.ops as ops
from fuseinfer.ops.discovery import export_ops

FAMILIES = {"activation", "attention", "kvcache", "linear", "norm", "rope"}


def test_every_registered_op_has_its_wrapper_exported():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("fuseinfer::") and not name.startswith("fuseinfer::_")}
    assert {"rmsnorm", "store_kv_cache", "paged_decode_attention"} <= registered
    wrapped = registered - {"paged_prefill_attention", "paged_decode_attention"}
    assert wrapped <= set(ops.__all__), wrapped - set(ops.__all__)
    assert {"PagedAttention", "AttentionShape"} <= set(ops.__all__)  # attention's wrapper
    assert FAMILIES <= set(ops.__all__)
    for name in ops.__all__:
        assert getattr(ops, name) is not None


def test_op_modules_stay_modules_in_their_family():
    assert isinstance(ops.norm.rmsnorm, types.ModuleType)
    assert isinstance(ops.rope.rope_with_cos_sin_cache, types.ModuleType)
    assert ops.rmsnorm is ops.norm.rmsnorm.rmsnorm  # the op's function, one level up
    assert ops.silu_and_mul is ops.activation.silu_and_mul.silu_and_mul
    # an op added as one more file of its family is exported with no list edited
    assert ops.qk_rmsnorm_rope is ops.rope.qk_rmsnorm_rope.qk_rmsnorm_rope


def _write_package(root, name: str, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))


FAMILY_INIT = """
    from fuseinfer.ops.discovery import import_modules
    __all__ = import_modules(__name__, __path__)
"""


def _export(root, monkeypatch, name: str, files: dict[str, str]) -> dict:
    _write_package(root, name, {"__init__.py": "", **files})
    monkeypatch.syspath_prepend(str(root))
    namespace: dict = {}
    names = export_ops(name, [str(root / name)], namespace)
    assert set(names) == set(namespace)
    return namespace


def test_a_new_op_file_is_found(tmp_path, monkeypatch):
    namespace = _export(tmp_path, monkeypatch, "demo_ops_found", {
        "fam/__init__.py": FAMILY_INIT,
        "fam/scale.py": "__all__ = ['scale']\ndef scale(x):\n    return 2 * x\n",
        "fam/helpers.py": "def helper():\n    return 1\n",  # no __all__: nothing exported
        "fam/_private.py": "raise AssertionError('private modules are not imported')\n",
        "fam/scale_compile_check.py": "raise AssertionError('commands are not imported')\n",
        "other/__init__.py": FAMILY_INIT,
        "other/shift.py": "__all__ = ['shift', 'SHIFT']\nSHIFT = 3\n"
                          "def shift(x):\n    return x + SHIFT\n",
    })
    assert sorted(namespace) == ["SHIFT", "fam", "other", "scale", "shift"]
    assert namespace["scale"](4) == 8 and namespace["shift"](1) == 4
    assert isinstance(namespace["fam"].scale, types.ModuleType)


def test_two_modules_exporting_one_name_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(ImportError, match="scale is exported by demo_ops_clash.b.scale"):
        _export(tmp_path, monkeypatch, "demo_ops_clash", {
            "a/__init__.py": FAMILY_INIT,
            "a/scale.py": "__all__ = ['scale']\nscale = 1\n",
            "b/__init__.py": FAMILY_INIT,
            "b/scale.py": "__all__ = ['scale']\nscale = 2\n",
        })
