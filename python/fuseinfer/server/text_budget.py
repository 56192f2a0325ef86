"""How many bytes of prompt text can possibly fit in the context, so that a text prompt
that cannot fit is refused before it is tokenized (tokenizing megabytes takes seconds on
the event loop, and the context check after it would refuse the prompt anyway)."""

from __future__ import annotations

from ..runtime.tokenizer import TextTokenizer

# Normalizers can make a token cover more input than its own text (NFKC folds a
# three-byte ligature into two letters); this leaves room for that.
NORMALIZER_SLACK = 4


def max_prompt_bytes(tokenizer: TextTokenizer, max_context: int) -> int:
    """An upper bound on the UTF-8 size of a text that tokenizes to at most `max_context`
    tokens: no token covers more than the longest token's text (times the slack). Decoded
    byte fragments come out as replacement characters, which only raises the bound."""
    longest = max((len(tokenizer.decode([i], skip_special_tokens=False).encode())
                   for i in range(tokenizer.vocab_size)), default=1)
    return max_context * max(longest, 1) * NORMALIZER_SLACK


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
