"""Pieces of stand-in engines for server tests that drive the engine loop without a model."""

from __future__ import annotations

from dataclasses import dataclass

from fuseinfer.runtime.step_output import FinishReason


@dataclass
class StandInRequest:
    """What the engine loop reads of a runtime Request: its id and how it finished."""

    rid: int
    finish_reason: FinishReason | None = None
    finish_detail: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
