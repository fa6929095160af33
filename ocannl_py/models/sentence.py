"""Sentence embeddings with a BERT checkpoint (MiniLM): sentence-transformers' pipeline of
tokenization, the encoder, mean pooling over the attention mask and L2 normalisation, compiled
once per batch shape."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ocannl_py import operation as ops
from ocannl_py.context import Context, Routine
from ocannl_py.models import bert
from ocannl_py.models.progress import stage
from ocannl_py.models.token_ids import ids_term, set_ids
from ocannl_py.tensor import Tensor

#: Texts per batch (sentence-transformers' default) and the multiple that a batch's token count
#: is padded to, so that batches of similar lengths share one compiled routine; a finer one up
#: to SHORT tokens, where the work grows with every padded token (a text of 10 tokens runs as
#: 12: 25% less work than 16; 8 routines at most cover the short lengths).
BATCH = 32
LENGTH_STEP = 16
SHORT, SHORT_STEP = 32, 4


def padded_length(length: int, max_positions: int) -> int:
    """The token count that a batch of `length` tokens runs as."""
    step = SHORT_STEP if length <= SHORT else LENGTH_STEP
    return min(-(-length // step) * step, max_positions)


class SentenceEncoder:
    """`encode(texts)`: one L2-normalised embedding per text (`texts x hidden`, float32)."""

    def __init__(self, checkpoint, ctx: Context, *, progress: bool = True) -> None:
        if not isinstance(checkpoint.config, bert.BertConfig):
            raise ValueError(f"embed: {checkpoint.name!r} is a {checkpoint.kind}, not a BERT")
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.ctx = ctx
        self.progress = progress
        self.tokenizer = checkpoint.tokenizer()
        self.params: dict = {}
        self._loaded = False
        # By (batch, tokens): the routine and its input terms and result.
        self._built: dict[tuple[int, int], tuple[Routine, dict[str, Tensor], Tensor]] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.tokenizer.encode(texts, max_length=self.checkpoint.max_length)
        out = []
        for start in range(0, len(encoded.ids), BATCH):
            rows = slice(start, start + BATCH)
            out.append(self._run(encoded.ids[rows], encoded.type_ids[rows],
                                 encoded.attention_mask[rows]))  # fmt: skip
        return np.concatenate(out)

    def _run(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        # Padding more tokens changes nothing (they are masked out) and reuses routines.
        padded = padded_length(length, self.config.max_positions)
        routine, terms, pooled = self._routine(batch, padded)
        config = self.config
        set_ids(terms["ids"], _padded(ids, padded, self.tokenizer.pad_id), config.vocab_size,
                "embed: token ids")  # fmt: skip
        set_ids(terms["type_ids"], _padded(type_ids, padded, 0), config.type_vocab_size,
                "embed: token type ids")  # fmt: skip
        mask = _padded(mask, padded, 0).astype(np.float32)
        terms["mask"].set_value(mask.reshape(batch, 1, 1, padded))
        terms["token_mask"].set_value(mask)
        routine.run()
        return np.array(pooled.value, np.float32)

    def _routine(self, batch: int, length: int) -> tuple[Routine, dict[str, Tensor], Tensor]:
        key = (batch, length)
        if key not in self._built:

            def term(label: str, batch_dims: list[int], output_dims: list[int]) -> Tensor:
                return ops.term(label, batch_dims=batch_dims, input_dims=[],
                                output_dims=output_dims)  # fmt: skip

            terms = {name: ids_term(name, [batch, length]) for name in
                     ("ids", "type_ids", "positions")}  # fmt: skip
            terms["token_mask"] = term("token_mask", [batch, length], [])
            terms["mask"] = term("mask", [batch, 1, 1], [length])
            hidden = bert.encoder(terms["ids"], terms["type_ids"], terms["positions"],
                                  terms["mask"], self.config, params=self.params)  # fmt: skip
            pooled = bert.mean_pooled(hidden, terms["token_mask"])
            if not self._loaded:
                with stage(f"loading {self.checkpoint.name}", self.progress):
                    self.checkpoint.load_into(self.params, progress=self.progress)
                self._loaded = True
            with stage(f"compiling the encoder for {batch} x {length} tokens", self.progress):
                routine = self.ctx.compile(pooled.forward, "sentence_embeddings")
            # The same on every run of this shape.
            positions = np.broadcast_to(np.arange(length), (batch, length))
            set_ids(terms["positions"], positions, self.config.max_positions, "embed: positions")
            self._built[key] = (routine, terms, pooled)
        return self._built[key]


def _padded(values: np.ndarray, length: int, fill: int) -> np.ndarray:
    """`values` (batch x tokens) with `fill` appended up to `length` tokens (faster than np.pad,
    which costs more than a short text's other host work)."""
    out = np.full((values.shape[0], length), fill, dtype=np.asarray(values).dtype)
    out[:, : values.shape[1]] = values
    return out
