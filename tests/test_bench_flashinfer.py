"""FlashInfer as a same-run baseline, on the CPU: a stand-in `flashinfer` package (FlashInfer's
documented semantics in torch ops) is picked up by the norm, rope and attention suites,
checked against our ops and timed; a deliberately wrong stand-in is reported as disagreeing
and never timed; without FlashInfer the suites add no FlashInfer keys; the environment
records the version."""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fuseinfer  # noqa: F401  (registers the ops)
from fuseinfer.bench import attention_baselines, flashinfer_baselines
from fuseinfer.bench.environment import collect_environment
from fuseinfer.bench.report import format_table
from fuseinfer.bench.suites import attention, norm, rope
from fuseinfer.bench.timing import time_eager_cpu
from fuseinfer.ops.attention.reference import attend

VERSION = flashinfer_baselines.PINNED_VERSION


# ---- the stand-in package -------------------------------------------------------------------
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (w.float() + offset)


def _rotate(x: torch.Tensor, positions: torch.Tensor, head_size: int, cache: torch.Tensor,
            is_neox: bool) -> None:
    """FlashInfer's documented rotation of x [tokens, heads * head_size], in place."""
    heads = x.view(x.size(0), -1, head_size)
    half = cache.size(1) // 2
    cos, sin = cache[positions].unsqueeze(1).split(half, dim=-1)
    rot = heads[..., :2 * half].float()
    if is_neox:
        a, b = rot[..., :half], rot[..., half:]
        rot = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    heads[..., :2 * half] = rot.to(x.dtype)


# The keywords FlashInfer 0.7.2.post1's plan() takes after page_size (decode.py
# BatchDecodeWithPagedKVCacheWrapper._plan_impl, prefill.py BatchPrefillWithPagedKVCacheWrapper
# .plan): a keyword outside these raises TypeError there, so it does here.
DECODE_PLAN_KEYWORDS = frozenset((
    "pos_encoding_mode", "window_left", "window_right", "logits_soft_cap", "q_data_type",
    "kv_data_type", "o_data_type", "data_type", "sm_scale", "rope_scale", "rope_theta",
    "non_blocking", "block_tables", "seq_lens", "fixed_split_size", "disable_split_kv",
    "q_len_per_req", "is_causal"))
PREFILL_PLAN_KEYWORDS = frozenset((
    "head_dim_vo", "custom_mask", "packed_custom_mask", "causal", "pos_encoding_mode",
    "use_fp16_qk_reduction", "sm_scale", "window_left", "logits_soft_cap", "rope_scale",
    "rope_theta", "q_data_type", "kv_data_type", "o_data_type", "non_blocking",
    "prefix_len_ptr", "token_pos_in_items_ptr", "token_pos_in_items_len",
    "max_item_len_ptr", "seq_lens", "seq_lens_q", "block_tables", "max_token_per_sequence",
    "max_sequence_kv", "fixed_split_size", "disable_split_kv", "uniform_q_len"))


def _only(keywords: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = set(keywords) - allowed
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {sorted(unknown)}")


class _Paged:
    """FlashInfer's paged attention semantics from indptr / indices / last_page_len, on a
    stand-in Hopper: backend "auto" resolves where FlashInfer resolves it (prefill: FA3
    in plan(); the sink variant: FA3 in its constructor; decode: FA2), and a resolved
    backend in `unbuildable` fails where FlashInfer builds that kernel."""

    calls: Counter[str]
    wrong: bool
    kind: str
    unbuildable: tuple[str, ...]  # resolved backends whose kernels fail to build
    sinks: bool = False  # run() takes the sink variant's extra tensor

    def __init__(self, workspace: torch.Tensor, kv_layout: str = "NHD", *,
                 backend: str = "auto") -> None:
        assert kv_layout == "NHD" and workspace.dtype == torch.uint8
        assert backend in ("auto", "fa2", "fa3"), backend
        self._backend = backend

    def _build(self, backend: str) -> None:
        if backend in self.unbuildable:
            self.calls[f"build {backend}"] += 1
            raise RuntimeError(f"Ninja build failed\nmissing sources for {backend}")

    def _plan(self, qo_indptr: torch.Tensor | None, indptr: torch.Tensor,
              indices: torch.Tensor, last_page_len: torch.Tensor, q_heads: int,
              kv_heads: int, head_dim: int, page_size: int, *, window_left: int = -1,
              sm_scale: float | None = None, causal: bool = True,
              q_data_type: torch.dtype | str = "float16",
              kv_data_type: torch.dtype | None = None, **_: Any) -> None:
        assert causal, "our prefill is causal"
        for t in (qo_indptr, indptr, indices, last_page_len):
            assert t is None or t.dtype == torch.int32, "FlashInfer's indices are int32"
        assert q_heads % kv_heads == 0
        self.qo = None if qo_indptr is None else qo_indptr.tolist()
        self.indptr, self.indices = indptr.tolist(), indices.long()
        self.last, self.page_size = last_page_len.tolist(), page_size
        assert len(self.indptr) == len(self.last) + 1
        assert len(self.indices) == self.indptr[-1]
        assert all(0 <= n <= page_size for n in self.last)  # tokens in the last page
        self.window_left = window_left
        self.window = None if window_left < 0 else window_left
        self.scale = sm_scale if sm_scale is not None else head_dim ** -0.5
        self.q_dtype = q_data_type
        self.kv_dtype = q_data_type if kv_data_type is None else kv_data_type
        self.q_heads, self.head_dim = q_heads, head_dim

    def run(self, q: torch.Tensor, paged_kv_cache: tuple[torch.Tensor, torch.Tensor],
            *sink: torch.Tensor, out: torch.Tensor | None = None,
            window_left: int | None = None, enable_pdl: bool | None = None
            ) -> torch.Tensor:
        """`sink`: the attention-sink variant's float32 [q_heads] logits (its plain
        wrappers take no positional extra for bf16, and FA2/FA3 drop `sinks=`)."""
        assert len(sink) == (1 if self.sinks else 0), "sink: the sink variant's only"
        assert not sink or (sink[0].dtype == torch.float32
                            and sink[0].shape == (self.q_heads,))
        assert window_left is None or window_left == self.window_left
        self.calls[self.kind] += 1
        k_cache, v_cache = paged_kv_cache
        assert k_cache.dim() == 4 and k_cache.size(1) == self.page_size
        assert q.dtype == self.q_dtype and k_cache.dtype == v_cache.dtype == self.kv_dtype
        assert q.shape[1:] == (self.q_heads, self.head_dim)
        if out is None:
            out = torch.empty_like(q)
        assert out.shape == q.shape and out.dtype == self.q_dtype  # o_data_type: q's
        qo = self.qo or list(range(len(self.last) + 1))
        assert q.size(0) == qo[-1]
        for b, last in enumerate(self.last):
            pages = self.indices[self.indptr[b]:self.indptr[b + 1]]
            n = (len(pages) - 1) * self.page_size + last
            k = k_cache[pages].flatten(0, 1)[:n].float()
            v = v_cache[pages].flatten(0, 1)[:n].float()
            rows = q[qo[b]:qo[b + 1]]
            positions = torch.arange(n - rows.size(0), n)
            got, _ = attend(rows, k, v, positions, self.scale, self.window,
                            sink[0] if sink else None, 0.0)
            out[qo[b]:qo[b + 1]] = (got * (2 if self.wrong else 1)).to(out.dtype)
        return out


def stand_in(wrong: bool = False, unbuildable: tuple[str, ...] = ()
             ) -> tuple[dict[str, types.ModuleType], Counter[str]]:
    """The `flashinfer` package and its submodules, and a counter of calls per function;
    `wrong`: every function's output is twice the right one; `unbuildable`: attention
    backends that fail to build."""
    calls: Counter[str] = Counter()
    scale = 2.0 if wrong else 1.0

    def out_of_place(name: str, offset: float) -> Callable[..., torch.Tensor]:
        def fn(input, weight, eps=1e-6, out=None, enable_pdl=None):
            # Its kernel reads weight as input's dtype unchecked (csrc/norm.cu).
            assert weight.dtype == input.dtype and weight.shape == input.shape[-1:]
            assert out is None or (out.shape == input.shape and out.dtype == input.dtype)
            calls[name] += 1
            out = torch.empty_like(input) if out is None else out
            out.copy_(_rms(input, weight, eps, offset) * scale)
            return out
        return fn

    def fused(name: str, offset: float) -> Callable[..., None]:
        def fn(input, residual, weight, eps=1e-6, enable_pdl=None):
            assert weight.dtype == input.dtype == residual.dtype
            assert residual.shape == input.shape and weight.shape == input.shape[-1:]
            calls[name] += 1
            residual.copy_(input.float() + residual.float())
            input.copy_(_rms(residual, weight, eps, offset) * scale)
        return fn

    norm_module = types.ModuleType("flashinfer.norm")
    for name, offset in (("rmsnorm", 0.0), ("gemma_rmsnorm", 1.0)):
        setattr(norm_module, name, out_of_place(name, offset))
    for name, offset in (("fused_add_rmsnorm", 0.0), ("gemma_fused_add_rmsnorm", 1.0)):
        setattr(norm_module, name, fused(name, offset))

    rope_module = types.ModuleType("flashinfer.rope")

    def apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size,
                                              cos_sin_cache, is_neox=True):
        calls["rope"] += 1
        # csrc/rope.cu apply_rope_pos_ids_cos_sin_cache: a contiguous float32 cache and
        # int32/int64 positions; q and k viewed as [nnz, heads, head_size] (2-D in, or 3-D),
        # rows may be strided but the last dim is contiguous; rotary_dim <= head_size.
        assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.is_contiguous()
        assert positions.dtype in (torch.int32, torch.int64) and positions.is_contiguous()
        assert positions.dim() == 1 and query.size(0) == key.size(0) == positions.size(0)
        assert query.stride(-1) == key.stride(-1) == 1
        assert query.size(-1) % head_size == 0 and key.size(-1) % head_size == 0
        assert cos_sin_cache.size(1) <= head_size
        query.view(query.shape[0], -1, head_size)  # as FlashInfer views them
        key.view(key.shape[0], -1, head_size)
        for x in (query, key):
            _rotate(x, positions, head_size, cos_sin_cache, is_neox)
            x.mul_(scale)

    rope_module.apply_rope_with_cos_sin_cache_inplace = apply_rope_with_cos_sin_cache_inplace

    activation_module = types.ModuleType("flashinfer.activation")

    def silu_and_mul(input, out=None, enable_pdl=None):
        assert input.size(-1) % 2 == 0
        assert out is None or (out.shape == input.shape[:-1] + (input.size(-1) // 2,))
        calls["silu_and_mul"] += 1
        gate, up = input.float().chunk(2, dim=-1)
        result = (F.silu(gate) * up * scale).to(input.dtype)
        return result if out is None else out.copy_(result)

    activation_module.silu_and_mul = silu_and_mul

    class Decode(_Paged):
        def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                     use_tensor_cores=False, paged_kv_indptr_buffer=None,
                     paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None,
                     backend="auto", jit_args=None):
            super().__init__(float_workspace_buffer, kv_layout, backend=backend)
            self._use_tensor_cores = use_tensor_cores

        @property
        def resolved_backend(self):
            if self._backend == "auto" and not self._use_tensor_cores:
                return "fa2"  # its CUDA-core decode kernel
            return self._backend

        def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                 page_size, **kwargs):
            _only(kwargs, DECODE_PLAN_KEYWORDS, "decode plan()")
            if self._use_tensor_cores:
                if self._backend == "auto":
                    self._backend = "fa2"  # its bf16/fp16 tensor-core decode pick
                self._build(self._backend)
            self._plan(None, indptr, indices, last_page_len, num_qo_heads, num_kv_heads,
                       head_dim, page_size, **kwargs)

    class Prefill(_Paged):
        def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                     qo_indptr_buf=None, paged_kv_indptr_buf=None, paged_kv_indices_buf=None,
                     paged_kv_last_page_len_buf=None, custom_mask_buf=None,
                     mask_indptr_buf=None, backend="auto", jit_args=None, jit_kwargs=None,
                     variant_owns_mask=False):
            super().__init__(float_workspace_buffer, kv_layout, backend=backend)

        def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                 num_qo_heads, num_kv_heads, head_dim_qk, page_size, **kwargs):
            _only(kwargs, PREFILL_PLAN_KEYWORDS, "prefill plan()")
            if self._backend == "auto":
                self._backend = "fa3"  # determine_attention_backend on sm90
            if not self.sinks:
                self._build(self._backend)  # get_batch_prefill_module in plan()
            kwargs.setdefault("causal", False)  # FlashInfer's default: not causal
            self._plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                       num_qo_heads, num_kv_heads, head_dim_qk, page_size, **kwargs)

    class PrefillWithSinks(Prefill):
        sinks = True

        def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                     qo_indptr_buf=None, paged_kv_indptr_buf=None, paged_kv_indices_buf=None,
                     paged_kv_last_page_len_buf=None, custom_mask_buf=None,
                     mask_indptr_buf=None, backend="auto", pos_encoding_mode="NONE",
                     use_fp16_qk_reduction=False, q_data_type=torch.bfloat16,
                     kv_data_type=torch.bfloat16, head_dim_qk=128, head_dim_vo=128,
                     window_left=-1):
            assert backend in ("fa2", "fa3", "auto")
            if backend == "auto":
                backend = "fa3"  # resolved before its JIT module is built
            self._build(backend)  # built in the constructor (jit_args)
            super().__init__(float_workspace_buffer, kv_layout, backend=backend)
            assert head_dim_qk == head_dim_vo
            self.built = (q_data_type, kv_data_type, head_dim_qk, window_left >= 0)

        def plan(self, *args, **kwargs):
            super().plan(*args, **kwargs)
            # its kernel is built for one dtype, head dim and window on/off
            assert self.built == (self.q_dtype, self.kv_dtype, self.head_dim,
                                  self.window is not None), self.built

    for cls, kind in ((Decode, "decode"), (Prefill, "prefill"), (PrefillWithSinks, "sinks")):
        cls.calls, cls.wrong, cls.kind, cls.unbuildable = calls, wrong, kind, unbuildable
    decode_module = types.ModuleType("flashinfer.decode")
    decode_module.BatchDecodeWithPagedKVCacheWrapper = Decode
    prefill_module = types.ModuleType("flashinfer.prefill")
    prefill_module.BatchPrefillWithPagedKVCacheWrapper = Prefill
    attention_module = types.ModuleType("flashinfer.attention")
    attention_module.BatchAttentionWithAttentionSinkWrapper = PrefillWithSinks

    package = types.ModuleType("flashinfer")
    package.__version__ = VERSION
    package.__path__ = []  # a package, so its submodules import
    modules = {"flashinfer": package}
    for sub, module in (("norm", norm_module), ("rope", rope_module),
                        ("activation", activation_module), ("decode", decode_module),
                        ("prefill", prefill_module), ("attention", attention_module)):
        setattr(package, sub, module)
        modules[f"flashinfer.{sub}"] = module
    return modules, calls


def _install(monkeypatch, **options: Any) -> Counter[str]:
    modules, calls = stand_in(**options)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(flashinfer_baselines, "_UNBUILDABLE", {})
    return calls


@pytest.fixture
def flashinfer(monkeypatch):
    """Install the right stand-in; returns its call counter."""
    return _install(monkeypatch)


@pytest.fixture
def wrong_flashinfer(monkeypatch):
    return _install(monkeypatch, wrong=True)


@pytest.fixture
def no_flashinfer(monkeypatch):
    for name in [n for n in sys.modules if n == "flashinfer" or n.startswith("flashinfer.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import flashinfer raises


def host_timed(calls, config):
    return time_eager_cpu(lambda: [call() for call in calls], repeats=1)


# ---- norm ---------------------------------------------------------------------------------
def _run_norm(monkeypatch, baselines: list[str]) -> list[dict[str, Any]]:
    make_sets = norm._make_sets
    monkeypatch.setattr(norm, "time_calls", host_timed)
    monkeypatch.setattr(norm, "_make_sets", lambda *args: make_sets(*args[:3], device="cpu"))
    return norm.run([norm.Shape(3, 64)], norm.ALL_OPS, baselines, copy_gbps=None)


def test_norm_times_flashinfer_for_every_op_gemma_included(monkeypatch, flashinfer):
    rows = _run_norm(monkeypatch, ["eager", "flashinfer"])
    assert [r["op"] for r in rows] == list(norm.ALL_OPS)
    for row in rows:
        assert row["vs_flashinfer"] > 0 and row["flashinfer_us"] > 0, row
        assert row["flashinfer_rel_err"] < 1e-2 and "flashinfer_error" not in row
        assert row["flashinfer_timing"] == "cpu"  # the suite's timing (host, in this test)
        assert ("vs_eager" in row) != row["op"].startswith("gemma")
    # Called once by the check, then by the timing (warm-up included).
    assert all(calls > 1 for calls in flashinfer.values()) and len(flashinfer) == 4
    assert "x flashinfer" in format_table(rows, norm.COLUMNS)


def test_norm_reports_a_disagreeing_flashinfer_and_does_not_time_it(monkeypatch,
                                                                     wrong_flashinfer):
    rows = _run_norm(monkeypatch, ["flashinfer"])
    for row in rows:
        assert "disagrees with ours" in row["flashinfer_error"]
        assert row["flashinfer_rel_err"] > 0.5
        assert "vs_flashinfer" not in row and "flashinfer_us" not in row
    assert set(wrong_flashinfer.values()) == {1}  # the check only


def test_norm_without_flashinfer_adds_no_flashinfer_keys(monkeypatch, no_flashinfer):
    assert not flashinfer_baselines.available()
    rows = _run_norm(monkeypatch, ["eager", "flashinfer"])
    assert rows and not any(key.startswith(("flashinfer", "vs_flashinfer"))
                            for row in rows for key in row)


# ---- rope ---------------------------------------------------------------------------------
def _run_rope(monkeypatch, baselines: list[str]) -> list[dict[str, Any]]:
    make_sets = rope.make_sets
    monkeypatch.setattr(rope, "time_calls", host_timed)
    monkeypatch.setattr(rope, "make_sets", lambda *args: make_sets(*args[:4], device="cpu"))
    models = [rope.MODELS["Llama-3-8B"], rope.MODELS["DeepSeek-V3"]]
    return rope.run(models, [3], baselines, copy_gbps=None)


def test_rope_times_flashinfer_after_checking_q_k_and_cache(monkeypatch, flashinfer):
    rows = _run_rope(monkeypatch, ["flashinfer"])
    by_op = {(r["op"], r["model"]): r for r in rows}
    for key in (("rope+kv", "Llama-3-8B"), ("rope", "DeepSeek-V3")):  # neox and interleaved
        row = by_op[key]
        assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < 1e-2, row
    store = by_op[("store_kv", "Llama-3-8B")]
    assert not any(k.startswith(("flashinfer", "vs_flashinfer")) for k in store)
    assert flashinfer["rope"] > 2


def test_rope_reports_a_disagreeing_flashinfer_and_does_not_time_it(monkeypatch,
                                                                     wrong_flashinfer):
    rows = _run_rope(monkeypatch, ["eager", "flashinfer"])
    rotating = [r for r in rows if r["op"] != "store_kv"]
    for row in rotating:
        assert "disagrees with ours" in row["flashinfer_error"] and "vs_flashinfer" not in row
        assert row["vs_eager"] > 0
    assert wrong_flashinfer["rope"] == len(rotating)


def test_rope_without_flashinfer_adds_no_flashinfer_keys(monkeypatch, no_flashinfer):
    rows = _run_rope(monkeypatch, ["eager", "flashinfer"])
    assert all("vs_eager" in r for r in rows)
    assert not any(k.startswith(("flashinfer", "vs_flashinfer")) for r in rows for k in r)


# ---- attention ----------------------------------------------------------------------------
TINY = attention.Model("tiny", 4, 2, 64)
TINY_SINKS = attention.Model("tiny-sinks", 4, 2, 64, sinks=True)
TINY_SINKS_WINDOW = attention.Model("tiny-sinks-win", 4, 2, 64, sinks=True, window_left=7)
TINY_GQA4 = attention.Model("tiny-gqa4", 8, 2, 64)  # decode on its tensor-core path
TINY_WINDOW = attention.Model("tiny-win", 4, 2, 64, window_left=7)


def _attention_cases(model: attention.Model) -> list[attention.Case]:
    return [attention.Case("decode", model, "3x37", (1, 1, 1), (37, 37, 37)),
            attention.Case("prefill", model, "extend", (5, 16), (37, 16))]


def _run_attention(monkeypatch, cases, baselines: list[str], page_size: int
                   ) -> list[dict[str, Any]]:
    make_inputs = attention.make_inputs
    monkeypatch.setattr(attention, "time_calls", host_timed)
    monkeypatch.setattr(attention_baselines, "time_calls", host_timed)
    monkeypatch.setattr(attention, "make_inputs",
                        lambda *args, **kwargs: make_inputs(*args, **kwargs, device="cpu"))
    return attention.run(cases, baselines, None, None, page_size=page_size)


@pytest.mark.parametrize("model", [TINY, TINY_GQA4, TINY_WINDOW], ids=lambda m: m.name)
@pytest.mark.parametrize("page_size", [16, 1])
def test_attention_times_flashinfer_on_the_same_paged_kv(monkeypatch, flashinfer, page_size,
                                                         model):
    rows = _run_attention(monkeypatch, _attention_cases(model), ["flashinfer"], page_size)
    for row in rows:
        assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < 1e-2, row
        assert "note" not in row
    # As FlashInfer resolves "auto" on Hopper: FA2 decode (CUDA-core or tensor-core), FA3
    # prefill.
    assert [r["flashinfer_backend"] for r in rows] == ["fa2", "fa3"]
    assert flashinfer["decode"] > 1 and flashinfer["prefill"] > 1


def test_attention_reports_a_disagreeing_flashinfer_and_does_not_time_it(monkeypatch,
                                                                          wrong_flashinfer):
    rows = _run_attention(monkeypatch, _attention_cases(TINY), ["flashinfer"], 16)
    for row in rows:
        assert "disagrees with ours" in row["flashinfer_error"] and "vs_flashinfer" not in row
    assert wrong_flashinfer == Counter({"decode": 1, "prefill": 1})


@pytest.mark.parametrize("model", [TINY_SINKS, TINY_SINKS_WINDOW], ids=lambda m: m.name)
def test_attention_rows_with_sinks_take_the_sink_variant(monkeypatch, flashinfer, model):
    rows = _run_attention(monkeypatch, _attention_cases(model), ["flashinfer"], 16)
    for row in rows:
        assert row["vs_flashinfer"] > 0 and row["flashinfer_rel_err"] < 1e-2, row
        assert "attention-sink variant" in row["note"] and row["flashinfer_backend"] == "fa3"
    assert set(flashinfer) == {"sinks"} and flashinfer["sinks"] > 2


def test_attention_falls_back_to_fa2_where_its_own_pick_cannot_build(monkeypatch):
    calls = _install(monkeypatch, unbuildable=("fa3",))  # a bundle carrying FA2 only
    # The same kernels twice: a failure is remembered.
    cases = (_attention_cases(TINY) + _attention_cases(TINY_SINKS)) * 2
    rows = _run_attention(monkeypatch, cases, ["flashinfer"], 16)
    for row in rows:
        assert row["vs_flashinfer"] > 0 and row["flashinfer_backend"] == "fa2", row
        fell_back = "backend auto cannot run here (RuntimeError: missing sources for fa3)"
        # "auto" decode is FA2 already; prefill and the sink variant resolve to FA3.
        assert (fell_back in row.get("note", "")) == (row["kind"] == "prefill"
                                                      or "sinks" in row["model"]), row
    # Once per kernel (prefill, sink decode, sink prefill), not once per row.
    assert calls["build fa3"] == 3


def test_attention_without_flashinfer_adds_no_flashinfer_keys(monkeypatch, no_flashinfer):
    rows = _run_attention(monkeypatch, _attention_cases(TINY_SINKS), ["flashinfer"], 16)
    assert not any(k.startswith(("flashinfer", "vs_flashinfer")) for r in rows for k in r)
    assert not any("note" in r for r in rows)


def test_page_index_maps_our_padded_page_table():
    table = torch.tensor([[7, 2, 9, 9], [4, 7, 7, 7], [1, 3, 5, 8]], dtype=torch.int32)
    index = flashinfer_baselines.page_index(table, [20, 16, 49], 16)
    assert index.indptr.tolist() == [0, 2, 3, 7]
    assert index.indices.tolist() == [7, 2, 4, 1, 3, 5, 8]
    assert index.last_page_len.tolist() == [4, 16, 1]
    assert index.indices.dtype == index.indptr.dtype == torch.int32
    cache = torch.zeros(5, 2, 64)
    assert flashinfer_baselines.paged_kv(cache).shape == (5, 1, 2, 64)
    assert flashinfer_baselines.decode_uses_tensor_cores(32, 8)
    assert not flashinfer_baselines.decode_uses_tensor_cores(8, 8)


# ---- wrappers and the environment -----------------------------------------------------------
def test_silu_and_mul_and_norm_wrappers_take_our_argument_order(flashinfer):
    x = torch.randn(3, 16)
    out = torch.empty(3, 8)
    flashinfer_baselines.silu_and_mul(out, x)
    ours = torch.empty(3, 8)
    torch.ops.fuseinfer.silu_and_mul(ours, x)
    torch.testing.assert_close(out, ours)
    y, w = torch.empty(3, 16), torch.randn(16)
    flashinfer_baselines.norm("rmsnorm")(y, x, w, 1e-6)
    ours_norm = torch.empty(3, 16)
    torch.ops.fuseinfer.rmsnorm(ours_norm, x, w, 1e-6)
    torch.testing.assert_close(y, ours_norm)
    with pytest.raises(ValueError, match="no norm op"):
        flashinfer_baselines.norm("layernorm")


def test_environment_records_the_flashinfer_version(flashinfer):
    assert collect_environment()["flashinfer"] == VERSION


def test_environment_without_flashinfer_records_null(monkeypatch, no_flashinfer):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert collect_environment()["flashinfer"] is None
