"""Engine tokens as text: per choice (`pieces`), and the choices of one response together
(`choice_pieces`), with stop strings applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..runtime.sampling import SamplingParams
from ..runtime.step_output import FinishReason
from ..runtime.tokenizer import IncrementalDetokenizer, TextTokenizer
from .engine_client import EngineClient
from .errors import ApiError
from .openai_format import LogprobItem

# (new text, new tokens, STOP/LENGTH or None, (token, logprob entry) per new token)
Piece = tuple[str, int, FinishReason | None, list[LogprobItem]]
# the same with the choice's index first
IndexedPiece = tuple[int, str, int, FinishReason | None, list[LogprobItem]]


@dataclass(frozen=True, slots=True)
class Generation:
    """One choice of a response: one engine request."""

    index: int
    prompt: list[int]
    params: SamplingParams


async def pieces(client: EngineClient, tokenizer: TextTokenizer | None, gen: Generation,
                 stops: list[str]) -> AsyncIterator[Piece]:
    """One choice's text as it comes. With stop strings, text that could start one is held
    back; a match ends the choice there (finish STOP) and aborts it in the engine. Without a
    tokenizer the text is empty (token-id clients read the tokens)."""
    detok = IncrementalDetokenizer(tokenizer) if tokenizer else None
    hold = max((len(x) for x in stops), default=1) - 1
    pending = ""
    rid, stream = client.submit(gen.prompt, gen.params)
    tokens_of = client.tokens(rid, stream)
    try:
        async for tokens, finish, lps in tokens_of:
            pending += "".join(detok.add(t) for t in tokens) if detok else ""
            items = list(zip(tokens, lps, strict=True)) if lps else []
            if stops:
                hits = [i for i in (pending.find(x) for x in stops) if i >= 0]
                if hits:
                    yield pending[:min(hits)], len(tokens), FinishReason.STOP, items
                    return
                if finish is None and hold:
                    cut = max(len(pending) - hold, 0)
                    yield pending[:cut], len(tokens), None, items
                    pending = pending[cut:]
                    continue
            yield pending, len(tokens), finish, items
            pending = ""
    finally:
        await tokens_of.aclose()  # aborts the request now if it is still running


async def choice_pieces(client: EngineClient, tokenizer: TextTokenizer | None,
                        gens: list[Generation], stops: list[str]
                        ) -> AsyncIterator[IndexedPiece]:
    """The pieces of every choice, tagged with its index, as they come."""
    if len(gens) == 1:  # the common case, without the merge's task and queue hop per token
        index = gens[0].index
        async for text, count, finish, items in pieces(client, tokenizer, gens[0], stops):
            yield index, text, count, finish, items
        return
    async for piece in _merged(client, tokenizer, gens, stops):
        yield piece


async def _merged(client: EngineClient, tokenizer: TextTokenizer | None,
                  gens: list[Generation], stops: list[str]) -> AsyncIterator[IndexedPiece]:
    """One task per choice feeding one queue; an early exit (client gone) or an error in
    one choice cancels them all, which aborts their engine requests."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def feed(gen: Generation) -> None:
        try:
            async for text, count, finish, items in pieces(client, tokenizer, gen, stops):
                await queue.put((gen.index, text, count, finish, items))
        except ApiError as err:  # hand it to the consumer
            await queue.put(err)
        finally:
            await queue.put(end)

    tasks = [asyncio.create_task(feed(g)) for g in gens]
    try:
        live = len(gens)
        while live:
            item = await queue.get()
            if item is end:
                live -= 1
            elif isinstance(item, ApiError):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
