"""Text <-> token ids with a Hugging Face tokenizer.json (the `tokenizers` library), and
incremental detokenization for streaming."""

from __future__ import annotations

import json
from pathlib import Path


class TextTokenizer:
    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no tokenizer.json (token-id prompts still "
                                    "work without one)")
        self._tok = Tokenizer.from_file(str(path))
        cfg_path = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        # newer checkpoints (GPT-OSS among them) ship the template as its own file
        template = folder / "chat_template.jinja"
        if not self.config.get("chat_template") and template.exists():
            self.config["chat_template"] = template.read_text()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Yields the new text of each appended token, holding back bytes that do not yet form
    a whole character (a multi-byte character split across tokens).

    A token costs the same however long the stream is: only a window at the end is decoded,
    the tokens not shown yet after a few shown ones as context (some tokenizers decode the
    first token of a text differently, e.g. without its leading space), and the new text is
    what the window adds to the context's own text. The window starts where a whole
    character ended, so its text is the whole stream's text from there on."""

    CONTEXT = 3  # the window starts this many shown pieces back

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        # token counts at which the text shown so far ended (whole characters), the last
        # CONTEXT + 1 of them; ids[marks[0]:marks[-1]] is the context, already shown
        self.marks: list[int] = [0]

    def add(self, token: int) -> str:
        ids, marks = self.ids, self.marks
        ids.append(token)
        text = self.tokenizer.decode(ids[marks[0]:])
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        shown = self.tokenizer.decode(ids[marks[0]:marks[-1]]) if len(marks) > 1 else ""
        marks.append(len(ids))
        if len(marks) > self.CONTEXT + 1:
            del marks[0]
        return text[len(shown):]
