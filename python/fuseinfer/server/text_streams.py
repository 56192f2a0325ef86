"""Engine tokens as text: per choice (`pieces`), and the choices of one response together
(`choice_pieces`), with stop strings applied (never before a choice's `min_new_tokens`), and
prompts echoed in front (`with_echo`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
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
    back; a match ends the choice there (finish STOP) and aborts it in the engine. A match
    must end in the text of the `min_new_tokens`-th token or later, so that a stop string
    does not end a choice sooner than the engine would end it on EOS. Without a tokenizer
    the text is empty (token-id clients read the tokens)."""
    detok = IncrementalDetokenizer(tokenizer) if tokenizer else None
    hold = max((len(x) for x in stops), default=1) - 1
    # Per token, only `pending` is scanned: the new text and at most `hold` characters
    # before it. The earliest match of any stop string: a regex's leftmost match.
    first_stop = re.compile("|".join(map(re.escape, stops))).search
    pending = ""
    # the first `early` tokens cannot end a choice; `shielded`: how many characters at the
    # start of `pending` are their text (a match must end past them)
    early, shielded, produced = max(gen.params.min_new_tokens - 1, 0), 0, 0
    rid, stream = client.submit(gen.prompt, gen.params)
    tokens_of = client.tokens(rid, stream)
    try:
        async for tokens, finish, lps in tokens_of:
            if detok and produced < early:
                split = early - produced
                pending += "".join(detok.add(t) for t in tokens[:split])
                shielded = len(pending)
                pending += "".join(detok.add(t) for t in tokens[split:])
            elif detok:
                pending += detok.add(tokens[0]) if len(tokens) == 1 else \
                    "".join(detok.add(t) for t in tokens)
            produced += len(tokens)
            items = list(zip(tokens, lps, strict=True)) if lps else []
            if stops:
                if shielded:  # a match must end past the shielded text
                    hits = [i for i in (pending.find(x, max(shielded - len(x) + 1, 0))
                                        for x in stops) if i >= 0]
                    at = min(hits, default=-1)
                else:
                    hit = first_stop(pending)
                    at = hit.start() if hit else -1
                if at >= 0:
                    yield pending[:at], len(tokens), FinishReason.STOP, items
                    return
                if finish is None and hold:
                    cut = max(len(pending) - hold, 0)
                    yield pending[:cut], len(tokens), None, items
                    pending, shielded = pending[cut:], max(shielded - cut, 0)
                    continue
            yield pending, len(tokens), finish, items
            pending, shielded = "", 0
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


async def with_echo(source: AsyncIterator[IndexedPiece], prompt_text: Callable[[int], str]
                    ) -> AsyncIterator[IndexedPiece]:
    """`source` with each choice's prompt text (`prompt_text(index)`) in front of its first
    piece; every choice has one, as its last piece carries its finish."""
    echoed: set[int] = set()
    async with contextlib.aclosing(source):
        async for index, text, count, finish, items in source:
            if index not in echoed:
                echoed.add(index)
                text = prompt_text(index) + text
            yield index, text, count, finish, items
