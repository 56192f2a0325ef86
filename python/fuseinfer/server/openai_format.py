"""Engine results in OpenAI's terms: finish reasons and log-probabilities.

Finish reasons: OpenAI clients know `stop` and `length` (and tool/filter reasons this
server never produces). The engine's other two endings are errors, never a finish reason:
- REJECTED (the engine could not take the request, e.g. it needs more KV pages than the
  pool holds): HTTP 400 `invalid_request_error` with the engine's reason;
- ABORT reaching a client (the server dropped a request the client still waits for):
  HTTP 500 `server_error`.
The aborts a client causes (it went away, a stop string matched, its timeout ran out)
never reach it as a finish: the server stops reading before the engine reports them.
A stream reports either error as an error event, then `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..runtime.step_output import FinishReason, TokenLogprob
from .errors import ApiError
from .messages import Finish

_OPENAI_FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def openai_finish_reason(reason: FinishReason | None) -> str | None:
    """The OpenAI finish reason, `stop` or `length` (None while running). ABORT and REJECTED
    are not reasons a client knows: `finish_error` turns them into errors before any
    response shows them."""
    if reason is None:
        return None
    try:
        return _OPENAI_FINISH[reason]
    except KeyError:
        raise ValueError(f"{reason} is an error, not an OpenAI finish reason") from None


def finish_error(finish: Finish) -> ApiError | None:
    """The error a finish stands for, or None when it is a normal end (stop, length)."""
    if finish.reason in _OPENAI_FINISH:
        return None
    if finish.reason is FinishReason.REJECTED:
        return ApiError(f"the engine rejected the request: {finish.detail or 'no reason given'}")
    return ApiError("the server aborted the request" + (f": {finish.detail}" if finish.detail
                                                         else ""),
                    status=500, kind="server_error")


LogprobItem = tuple[int, TokenLogprob]  # (token id, (its logprob, [(id, logprob)] top-k))


def format_logprobs(items: Sequence[LogprobItem], chat: bool, token_text: Callable[[int], str],
                    offset: int = 0) -> dict:
    """OpenAI logprobs: chat's `content` list, or the completions legacy columns
    (`text_offset` counts from `offset`)."""
    if chat:
        return {"content": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode()),
             "top_logprobs": [{"token": token_text(u), "logprob": v,
                               "bytes": list(token_text(u).encode())} for u, v in top]}
            for t, (lp, top) in items]}
    texts = [token_text(t) for t, _ in items]
    offsets, at = [], offset
    for s in texts:
        offsets.append(at)
        at += len(s)
    return {"tokens": texts, "token_logprobs": [lp for _, (lp, _) in items],
            "top_logprobs": [{token_text(u): v for u, v in top} for _, (_, top) in items],
            "text_offset": offsets}
