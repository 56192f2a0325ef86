"""Chat templates: a checkpoint's template from tokenizer_config.json or, as newer ones
(GPT-OSS) ship it, from chat_template.jinja; the helpers templates call
(raise_exception, strftime_now) are there; ChatML without a template."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pytest

from fuseinfer.models.tiny_model import tiny_model_path
from fuseinfer.runtime.tokenizer import TextTokenizer
from fuseinfer.server.chat_template import render_chat
from fuseinfer.server.errors import ApiError

TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'bad' %}"
            "{{ raise_exception('no bad roles') }}{% endif %}"
            "<{{ m['role'] }}@{{ strftime_now('%Y') }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def folder(tmp_path):
    src = tiny_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_template_file_beside_the_tokenizer(folder):
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    tok = TextTokenizer(folder)
    year = datetime.now().strftime("%Y")
    got = render_chat(tok, [{"role": "user", "content": "hi"}])
    assert got == f"<user@{year}>hi<assistant>"
    with pytest.raises(ApiError, match="no bad roles"):
        render_chat(tok, [{"role": "bad", "content": "x"}])


def test_tokenizer_config_template_wins_over_the_file(folder):
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        cfg | {"chat_template": "[{{ messages[0]['content'] }}]"}))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    assert render_chat(TextTokenizer(folder), [{"role": "user", "content": "q"}]) == "[q]"


def test_chatml_without_a_template(folder):
    got = render_chat(TextTokenizer(folder), [{"role": "user", "content": "q"}])
    assert got == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
