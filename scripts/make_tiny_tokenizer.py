"""Writes python/fuseinfer/models/tiny/tokenizer.json: a byte-level BPE with the 256 byte
tokens, a few merges learned from a small built-in text, and chat special tokens. Run
once; the output is committed."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXT = """The quick brown fox jumps over the lazy dog. A tiny model for tests runs anywhere,
on a CPU or a GPU. Paged attention reads the KV cache; the scheduler batches requests.
Hello, world! What is the capital of France? Paris is the capital of France."""
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4, trainer)
    out = Path(__file__).resolve().parents[1] / "python/fuseinfer/models/tiny/tokenizer.json"
    tok.save(str(out))
    print(f"wrote {out}: vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
