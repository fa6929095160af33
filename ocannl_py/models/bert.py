"""BERT (MiniLM is one): the config read from config.json, the map from Hugging Face's weight
names and layouts to our parameter labels, and the encoder built from nn blocks on those labels
(`encoder`), with sentence-transformers' mean pooling (`mean_pooled`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ocannl_py import nn
from ocannl_py import operation as ops
from ocannl_py.models.lookup import lookup
from ocannl_py.models.weights import Entry, TensorSource, expand, map_weights, our_rows
from ocannl_py.persistence import CheckpointError
from ocannl_py.tensor import Tensor

#: `gelu` is the exact (erf) form; the others are the tanh approximation.
ACTIVATIONS = {"gelu": True, "gelu_new": False, "gelu_pytorch_tanh": False}


@dataclass(frozen=True)
class BertConfig:
    """The dims of a BERT encoder; `gelu_exact` chooses the erf form of GELU (BERT's) over tanh."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    gelu_exact: bool = True
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"bert: hidden_size {self.hidden_size} is not a multiple of num_heads "
                f"{self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: Mapping, source: str) -> BertConfig:
        """From the dict of a Hugging Face config.json (`source` names it in errors)."""
        get = _getter(config, source)
        if config.get("model_type", "bert") != "bert":
            raise CheckpointError(f"{source}: model_type {config['model_type']!r} is not 'bert'")
        act = get("hidden_act", str)
        if act not in ACTIVATIONS:
            raise CheckpointError(
                f"{source}: hidden_act {act!r} is not supported (one of {sorted(ACTIVATIONS)})"
            )
        embedding = config.get("position_embedding_type", "absolute")
        if embedding != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type {embedding!r} is not supported ('absolute')"
            )
        return cls(
            vocab_size=get("vocab_size", int),
            hidden_size=get("hidden_size", int),
            num_layers=get("num_hidden_layers", int),
            num_heads=get("num_attention_heads", int),
            intermediate_size=get("intermediate_size", int),
            max_positions=get("max_position_embeddings", int),
            type_vocab_size=get("type_vocab_size", int),
            layer_norm_eps=get("layer_norm_eps", float),
            gelu_exact=ACTIVATIONS[act],
            pad_token_id=int(config.get("pad_token_id") or 0),
        )


def _getter(config: Mapping, source: str):
    def get(key: str, kind: type):
        if key not in config:
            raise CheckpointError(f"{source}: no {key!r}")
        value = config[key]
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if not ok or isinstance(value, bool):
            raise CheckpointError(f"{source}: {key!r} should be {kind.__name__}, got {value!r}")
        return kind(value)

    return get


# Axes: e hidden, h heads, k head dim, f intermediate, v vocab, n positions, t token types,
# d the pooler's input (= e). Linear weights are `out in` on both sides (PyTorch's nn.Linear and
# our output-then-input memory order); embedding tables are `vocab dim` there, `dim vocab` here
# (oc.embed's table has the vocabulary as its input axis).
WEIGHTS = [
    Entry("embed.word.w", "embeddings.word_embeddings.weight", "v e -> e v", inputs=1),
    Entry("embed.pos.w", "embeddings.position_embeddings.weight", "n e -> e n", inputs=1),
    Entry("embed.type.w", "embeddings.token_type_embeddings.weight", "t e -> e t", inputs=1),
    Entry("embed.ln.w", "embeddings.LayerNorm.weight", "e -> e"),
    Entry("embed.ln.b", "embeddings.LayerNorm.bias", "e -> e"),
    Entry("layer{i}.attn.q.w", "encoder.layer.{i}.attention.self.query.weight", "(h k) e -> h k e", inputs=1),
    Entry("layer{i}.attn.q.b", "encoder.layer.{i}.attention.self.query.bias", "(h k) -> h k"),
    Entry("layer{i}.attn.k.w", "encoder.layer.{i}.attention.self.key.weight", "(h k) e -> h k e", inputs=1),
    Entry("layer{i}.attn.k.b", "encoder.layer.{i}.attention.self.key.bias", "(h k) -> h k"),
    Entry("layer{i}.attn.v.w", "encoder.layer.{i}.attention.self.value.weight", "(h k) e -> h k e", inputs=1),
    Entry("layer{i}.attn.v.b", "encoder.layer.{i}.attention.self.value.bias", "(h k) -> h k"),
    Entry("layer{i}.attn.o.w", "encoder.layer.{i}.attention.output.dense.weight", "e (h k) -> e h k", inputs=2),
    Entry("layer{i}.attn.o.b", "encoder.layer.{i}.attention.output.dense.bias", "e -> e"),
    Entry("layer{i}.ln1.w", "encoder.layer.{i}.attention.output.LayerNorm.weight", "e -> e"),
    Entry("layer{i}.ln1.b", "encoder.layer.{i}.attention.output.LayerNorm.bias", "e -> e"),
    Entry("layer{i}.mlp.fc.w", "encoder.layer.{i}.intermediate.dense.weight", "f e -> f e", inputs=1),
    Entry("layer{i}.mlp.fc.b", "encoder.layer.{i}.intermediate.dense.bias", "f -> f"),
    Entry("layer{i}.mlp.proj.w", "encoder.layer.{i}.output.dense.weight", "e f -> e f", inputs=1),
    Entry("layer{i}.mlp.proj.b", "encoder.layer.{i}.output.dense.bias", "e -> e"),
    Entry("layer{i}.ln2.w", "encoder.layer.{i}.output.LayerNorm.weight", "e -> e"),
    Entry("layer{i}.ln2.b", "encoder.layer.{i}.output.LayerNorm.bias", "e -> e"),
    Entry("pooler.w", "pooler.dense.weight", "e d -> e d", inputs=1, optional=True),
    Entry("pooler.b", "pooler.dense.bias", "e -> e", optional=True),
]  # fmt: skip

#: Checkpoints of BertModel name tensors from the root; those of BertFor... models put `bert.`.
PREFIXES = ("", "bert.")
#: Buffers that are not weights (position ids 0..n-1).
IGNORED = re.compile(r"^(bert\.)?embeddings\.position_ids$")


def axis_sizes(config: BertConfig) -> dict[str, int]:
    return {
        "e": config.hidden_size, "h": config.num_heads, "k": config.head_dim,
        "f": config.intermediate_size, "v": config.vocab_size, "n": config.max_positions,
        "t": config.type_vocab_size, "d": config.hidden_size,
    }  # fmt: skip


def rows(config: BertConfig) -> dict[str, dict]:
    """Our label -> its batch/input/output dims."""
    return our_rows(WEIGHTS, config.num_layers, axis_sizes(config))


def optional_labels(config: BertConfig) -> set[str]:
    return {ours for ours, _, entry in expand(WEIGHTS, config.num_layers) if entry.optional}


def read_weights(
    config: BertConfig, source: TensorSource, what: str, progress: bool = True
) -> dict[str, np.ndarray]:
    """Our label -> array, in our layout, from a BERT checkpoint."""
    return map_weights(
        WEIGHTS, source, layers=config.num_layers, sizes=axis_sizes(config),
        ignored=IGNORED.match, prefixes=PREFIXES, what=what, progress=progress,
    )  # fmt: skip


# ---- the encoder, from nn blocks ---------------------------------------------------------------


def _table(label: str, rows: int, config: BertConfig, params: nn.init.Params) -> Tensor:
    return nn.init.parameter(params, label, batch_dims=[], input_dims=[rows],
                             output_dims=[config.hidden_size])  # fmt: skip


def token_embedding(ids: Tensor, config: BertConfig, params: nn.init.Params = None) -> Tensor:
    """`embed.word.w` at the token ids (`..b.., seq |`): `..b.., seq | hidden`."""
    table = _table("embed.word.w", config.vocab_size, config, params)
    return lookup(table, ids, config.vocab_size)


def position_embedding(
    positions: Tensor, config: BertConfig, params: nn.init.Params = None
) -> Tensor:
    """`embed.pos.w` at the positions (`..b.., seq |`)."""
    table = _table("embed.pos.w", config.max_positions, config, params)
    return lookup(table, positions, config.max_positions)


def type_embedding(type_ids: Tensor, config: BertConfig, params: nn.init.Params = None) -> Tensor:
    """`embed.type.w` at the token type (segment) ids (`..b.., seq |`)."""
    table = _table("embed.type.w", config.type_vocab_size, config, params)
    return lookup(table, type_ids, config.type_vocab_size)


def encoder(
    ids: Tensor,
    type_ids: Tensor,
    positions: Tensor,
    mask: Tensor,
    config: BertConfig,
    *,
    params: nn.init.Params = None,
) -> Tensor:
    """BertModel's last hidden state (`batch, seq | hidden`): the three embeddings summed and
    normalised (`embed.ln`), then `num_layers` post-norm transformer blocks with exact GELU.
    `ids`, `type_ids`, `positions` are `batch, seq |`; `mask` (`batch, 1, 1 | seq`, 1 for a
    token and 0 for padding) keeps attention off the padding."""
    x = (
        token_embedding(ids, config, params)
        + type_embedding(type_ids, config, params)
        + position_embedding(positions, config, params)
    )
    h = nn.layer_norm(nn.dims.with_rows(x, output=[config.hidden_size]), "embed.ln",
                      config.layer_norm_eps, params=params)  # fmt: skip
    for i in range(config.num_layers):
        h = nn.transformer_block(
            h, config.num_heads, f"layer{i}", causal=False,
            mlp_ratio=config.intermediate_size / config.hidden_size, pre_norm=False,
            activation=lambda v: nn.gelu(v, exact=config.gelu_exact),
            eps=config.layer_norm_eps, mask=mask, params=params,
        )  # fmt: skip
    return h


def mean_pooled(hidden: Tensor, token_mask: Tensor, normalize: bool = True) -> Tensor:
    """sentence-transformers' pooling: the mean of `hidden` (`batch, seq | hidden`) over the
    tokens whose `token_mask` (`batch, seq |`) is 1, then divided by its L2 norm (at least
    1e-12, as `F.normalize`): `batch | hidden`."""
    total = ops.einsum("..b.., t | e; ..b.., t | => ..b.. | e", hidden, token_mask)
    count = ops.einsum1("..b.., t | => ..b.. |", token_mask)
    mean = total / ops.max(count, 1e-9)
    if not normalize:
        return mean
    norm = ops.sqrt(ops.einsum1("..b.. | e => ..b.. |", mean * mean))
    return mean / ops.max(norm, 1e-12)
