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
    a whole character (a multi-byte character split across tokens)."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters already returned

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        new = text[self.sent:]
        self.sent = len(text)
        return new
