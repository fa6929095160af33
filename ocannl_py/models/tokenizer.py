"""Tokenization with the `tokenizers` library from a model folder's tokenizer.json: batches
padded to their longest text, with the attention mask, and a clear error (or truncation, when
asked) for a text longer than the model takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class Encoded:
    """A batch of texts as int32 arrays of shape (texts, tokens); padding has mask 0."""

    ids: np.ndarray
    attention_mask: np.ndarray
    type_ids: np.ndarray


class Tokenizer:
    """A Hugging Face fast tokenizer read from tokenizer.json; the padding and truncation that
    file may set are replaced by `encode`'s."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path.name} in {path.parent}: this model folder has no tokenizer; give "
                "token ids instead"
            )
        self.path = path
        self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        padding = self._tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        return cls(folder / TOKENIZER_FILE)

    def encode(self, texts: Sequence[str], *, max_length: int, truncate: bool = False) -> Encoded:
        """Token ids of `texts` (special tokens included), padded to the longest. A text of more
        than `max_length` tokens is an error naming it, or is cut there with `truncate`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode: expected a list of strings")
        if not texts:
            raise ValueError("encode: no texts")
        if truncate:
            self._tokenizer.enable_truncation(max_length)
        try:
            encodings = self._tokenizer.encode_batch(list(texts))
        finally:
            self._tokenizer.no_truncation()
        for k, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
            if len(enc.ids) > max_length:
                shown = text if len(text) <= 40 else text[:37] + "..."
                raise ValueError(
                    f"text {k} ({shown!r}) has {len(enc.ids)} tokens; the model takes at most "
                    f"{max_length} (shorten it, or truncate)"
                )
        length = max(len(enc.ids) for enc in encodings)
        shape = (len(texts), length)
        ids = np.full(shape, self.pad_id, np.int32)
        mask = np.zeros(shape, np.int32)
        type_ids = np.zeros(shape, np.int32)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = enc.attention_mask
            type_ids[row, :n] = enc.type_ids
        return Encoded(ids, mask, type_ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
