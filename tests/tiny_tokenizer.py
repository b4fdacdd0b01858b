"""A 99-token character-level tokenizer for the `tiny` preset, built offline with `tokenizers`.

Ids: 0 `<unk>` (also pad), 1 `<s>`, 2 `</s>`, 3..97 the printable ASCII characters, 98 `<ImageHere>`.
Every character is its own token, so any ASCII prompt/answer round-trips exactly.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<s>", "</s>"]
IMAGE_TOKEN = "<ImageHere>"


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for code in range(0x20, 0x7F):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    assert len(tokenizer) == 99 and tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == 98
    return tokenizer
