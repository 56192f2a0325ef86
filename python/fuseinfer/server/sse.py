"""Server-sent events of a streaming completion, encoded by hand.

`ChunkEncoder.choice` runs once per token of every stream (~25,000 times a second at
batch 50), so the part every chunk shares (id, object, created, model) is JSON-encoded
once per response and only the choice is encoded per token.
"""

from __future__ import annotations

import json

DONE = "data: [DONE]\n\n"
_FINISH_JSON = {None: "null", "stop": '"stop"', "length": '"length"'}


class ChunkEncoder:
    """The events of one response: `chat.completion.chunk` or `text_completion` chunks."""

    def __init__(self, cid: str, created: int, model: str, chat: bool) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        # the shared head, its closing brace cut so the choices can follow
        self.head = "data: " + json.dumps({"id": cid, "object": obj, "created": created,
                                           "model": model})[:-1]
        self._choice_head = self.head + ', "choices": [{"index": '
        self._text_open = ', "delta": {"content": ' if chat else ', "text": '
        self._text_close = "}" if chat else ""

    def choice(self, index: int, text: str, finish_reason: str | None,
               logprobs_json: str = "null") -> str:
        """One choice's new text; `logprobs_json` is its logprobs already encoded."""
        return (f"{self._choice_head}{index}{self._text_open}{json.dumps(text)}"
                f'{self._text_close}, "logprobs": {logprobs_json}, "finish_reason": '
                f"{_FINISH_JSON[finish_reason]}}}]}}\n\n")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The final usage chunk (`stream_options.include_usage`): no choices."""
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return f'{self.head}, "choices": [], "usage": {json.dumps(usage)}}}\n\n'


def error_event(body: dict) -> str:
    """An error after the response started (timeout, rejection): its body as an event."""
    return f"data: {json.dumps(body)}\n\n"
