"""Checks shared by dispatch-table rules: thread counts, power-of-two tile sizes and token
bounds of a rule list tried in order (the last rule matches everything)."""

from __future__ import annotations

from .schema import TableError


def check_threads(threads: int, where: str) -> None:
    if not (32 <= threads <= 1024 and threads % 32 == 0):
        raise TableError(f"{where}.threads_per_block: must be a multiple of 32 in [32, 1024], "
                         f"got {threads}")


def check_pow2(value: int, low: int, high: int, where: str) -> None:
    if value < low or value > high or value & (value - 1):
        raise TableError(f"{where}: must be a power of two in [{low}, {high}], got {value}")


def check_bound(max_tokens: int | None, where: str) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise TableError(f"{where}.max_tokens: must be >= 1 or null, got {max_tokens}")


def check_last(rules: tuple, where: str) -> None:
    if not rules:
        raise TableError(f"{where}.rules: needs at least one rule")
    if rules[-1].max_tokens is not None:
        raise TableError(f"{where}.rules: the last rule must have max_tokens null")
