"""A conversation as the prompt text the model was trained on."""

from __future__ import annotations

from ..runtime.tokenizer import TextTokenizer
from .errors import ApiError


def _raise(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)


def render_chat(tokenizer: TextTokenizer | None, messages: list[dict]) -> str:
    """The conversation through the tokenizer's chat template (ChatML if it has none).
    Each message is a dict with `role` and a string `content` (text parts already joined),
    plus whatever other keys the client sent."""
    if tokenizer is None:
        raise ApiError("this model has no tokenizer: chat needs one", "messages")
    template = tokenizer.config.get("chat_template")
    if not template:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                       for m in messages) + "<|im_start|>assistant\n"
    import jinja2

    env = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True)
    # the helpers templates call (GPT-OSS's uses both), as transformers provides them
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True)
    except Exception as err:  # the messages' extra keys reach the template as sent
        raise ApiError(f"the chat template cannot render these messages: {err}",
                       "messages") from err
