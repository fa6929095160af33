"""GPT-2: the config read from config.json, the map from Hugging Face's weight names and layouts
to our parameter labels (Conv1D weights are stored `in out`, the transpose of nn.Linear; q, k and
v are one fused weight; the output head is tied to the token embedding), random models
(`gpt2-random:LAYERS,EMBD,HEADS`) for tests and benchmarks, and the forward pass built from nn
blocks on those labels (`logits`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from arrayjit.dtypes import DType, dtype_of
from ocannl_py import nn
from ocannl_py import operation as ops
from ocannl_py.models.weights import Entry, TensorSource, map_weights, our_rows
from ocannl_py.persistence import CheckpointError
from ocannl_py.tensor import Tensor

RANDOM_PREFIX = "gpt2-random:"
#: Options of `gpt2-random:L,E,H,key=value...` with their defaults (GPT-2's vocabulary and
#: context length).
RANDOM_OPTIONS = {"vocab": 50257, "positions": 1024, "seed": 0}


@dataclass(frozen=True)
class GPT2Config:
    """The dims of a GPT-2 decoder (Hugging Face's names); `n_inner` is the MLP width."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"gpt2: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_hf(cls, config: Mapping, source: str) -> GPT2Config:
        """From the dict of a Hugging Face config.json (`source` names it in errors)."""
        if config.get("model_type", "gpt2") != "gpt2":
            raise CheckpointError(f"{source}: model_type {config['model_type']!r} is not 'gpt2'")
        act = config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(
                f"{source}: activation_function {act!r} is not supported (gelu_new)"
            )
        for flag, value in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("reorder_and_upcast_attn", False), ("add_cross_attention", False),
                            ("tie_word_embeddings", True)):  # fmt: skip
            if config.get(flag, value) != value:
                raise CheckpointError(f"{source}: {flag}={config[flag]!r} is not supported")
        get = _getter(config, source)
        n_embd = get("n_embd")
        return cls(
            vocab_size=get("vocab_size"),
            n_positions=get("n_positions"),
            n_embd=n_embd,
            n_layer=get("n_layer"),
            n_head=get("n_head"),
            n_inner=int(config.get("n_inner") or 4 * n_embd),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        )

    def to_hf(self) -> dict:
        """A config.json that transformers' GPT2LMHeadModel reads as this config."""
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size, "n_positions": self.n_positions,
            "n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head,
            "n_inner": self.n_inner, "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": "gelu_new",
            "bos_token_id": self.vocab_size - 1, "eos_token_id": self.vocab_size - 1,
        }  # fmt: skip


def _getter(config: Mapping, source: str):
    def get(key: str) -> int:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{source}: {key!r} should be a positive int, got {value!r}")
        return value

    return get


# Axes: e embedding, h heads, k head dim, f MLP width, v vocab, n positions, p the three parts
# (q, k, v) of the fused attention weight. Conv1D weights are `in out`; ours are `out in`.
WEIGHTS = [
    Entry("embed.word.w", "wte.weight", "v e -> e v", inputs=1),
    Entry("embed.pos.w", "wpe.weight", "n e -> e n", inputs=1),
    Entry("layer{i}.ln1.w", "h.{i}.ln_1.weight", "e -> e"),
    Entry("layer{i}.ln1.b", "h.{i}.ln_1.bias", "e -> e"),
    Entry("layer{i}.attn.q.w", "h.{i}.attn.c_attn.weight", "e (p h k) -> p h k e", inputs=1, part=0),
    Entry("layer{i}.attn.k.w", "h.{i}.attn.c_attn.weight", "e (p h k) -> p h k e", inputs=1, part=1),
    Entry("layer{i}.attn.v.w", "h.{i}.attn.c_attn.weight", "e (p h k) -> p h k e", inputs=1, part=2),
    Entry("layer{i}.attn.q.b", "h.{i}.attn.c_attn.bias", "(p h k) -> p h k", part=0),
    Entry("layer{i}.attn.k.b", "h.{i}.attn.c_attn.bias", "(p h k) -> p h k", part=1),
    Entry("layer{i}.attn.v.b", "h.{i}.attn.c_attn.bias", "(p h k) -> p h k", part=2),
    Entry("layer{i}.attn.o.w", "h.{i}.attn.c_proj.weight", "(h k) e -> e h k", inputs=2),
    Entry("layer{i}.attn.o.b", "h.{i}.attn.c_proj.bias", "e -> e"),
    Entry("layer{i}.ln2.w", "h.{i}.ln_2.weight", "e -> e"),
    Entry("layer{i}.ln2.b", "h.{i}.ln_2.bias", "e -> e"),
    Entry("layer{i}.mlp.fc.w", "h.{i}.mlp.c_fc.weight", "e f -> f e", inputs=1),
    Entry("layer{i}.mlp.fc.b", "h.{i}.mlp.c_fc.bias", "f -> f"),
    Entry("layer{i}.mlp.proj.w", "h.{i}.mlp.c_proj.weight", "f e -> e f", inputs=1),
    Entry("layer{i}.mlp.proj.b", "h.{i}.mlp.c_proj.bias", "e -> e"),
    Entry("ln_f.w", "ln_f.weight", "e -> e"),
    Entry("ln_f.b", "ln_f.bias", "e -> e"),
]  # fmt: skip

#: GPT2LMHeadModel's files put `transformer.` before every name but the head; GPT2Model's none.
PREFIXES = ("transformer.", "")
TIED_HEAD = "lm_head.weight"
#: The causal-mask buffers older files hold, and the tied head (checked separately).
IGNORED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$|^lm_head\.weight$")


def axis_sizes(config: GPT2Config) -> dict[str, int]:
    return {
        "e": config.n_embd, "h": config.n_head, "k": config.head_dim, "f": config.n_inner,
        "v": config.vocab_size, "n": config.n_positions, "p": 3,
    }  # fmt: skip


def rows(config: GPT2Config) -> dict[str, dict]:
    """Our label -> its batch/input/output dims."""
    return our_rows(WEIGHTS, config.n_layer, axis_sizes(config))


def parameters(
    config: GPT2Config, dtype: str | DType, params: nn.init.Params = None
) -> dict[str, Tensor]:
    """Every parameter of the model stored in `dtype` (e.g. "bfloat16": half the bytes of
    float32; kernels read them widened to float32), to pass as a builder's `params`: those in
    `params` must already be of `dtype`, the others are created with the checkpoint's dims."""
    dtype = dtype_of(dtype)
    if not dtype.is_float:
        raise ValueError(f"gpt2: weights must be floats, not {dtype}")
    out = dict(params or {})
    for label, dims in rows(config).items():
        if label in out:
            if out[label].dtype != dtype:
                raise ValueError(
                    f"gpt2: parameter {label!r} is {out[label].dtype}, not the weights' {dtype}"
                )
            continue
        out[label] = ops.param(label, output_dims=dims["output"], input_dims=dims["input"],
                               dtype=dtype)  # fmt: skip
    return out


def optional_labels(config: GPT2Config) -> set[str]:
    return set()


def read_weights(
    config: GPT2Config, source: TensorSource, what: str, progress: bool = True
) -> dict[str, np.ndarray]:
    """Our label -> array, in our layout, from a GPT-2 checkpoint. A head stored beside the
    token embedding must equal it (GPT-2 ties them)."""
    out = map_weights(
        WEIGHTS, source, layers=config.n_layer, sizes=axis_sizes(config),
        ignored=IGNORED.match, prefixes=PREFIXES, what=what, progress=progress,
    )  # fmt: skip
    if TIED_HEAD in source:
        head = source[TIED_HEAD]
        if head.shape != (config.vocab_size, config.n_embd) or not np.array_equal(
            head.T, out["embed.word.w"]
        ):
            raise CheckpointError(
                f"{what}: {TIED_HEAD!r} in {source.where(TIED_HEAD)} differs from the token "
                "embedding; GPT-2 ties them (a separate output head is not supported)"
            )
    return out


def parse_random_name(name: str) -> tuple[GPT2Config, int]:
    """`gpt2-random:LAYERS,EMBD,HEADS[,vocab=V][,positions=P][,seed=S]` -> (config, seed)."""
    usage = f"expected {RANDOM_PREFIX}LAYERS,EMBD,HEADS[,vocab=V][,positions=P][,seed=S]"
    fields = name[len(RANDOM_PREFIX) :].split(",")
    if len(fields) < 3:
        raise ValueError(f"model name {name!r}: {usage}")
    options = dict(RANDOM_OPTIONS)
    try:
        layers, embd, heads = (int(f) for f in fields[:3])
        for field in fields[3:]:
            key, sep, value = field.partition("=")
            if not sep or key not in options:
                raise ValueError(f"unknown option {field!r} (options: {', '.join(options)})")
            options[key] = int(value)
    except ValueError as exc:
        raise ValueError(f"model name {name!r}: {exc}; {usage}") from None
    if min(layers, embd, heads, options["vocab"], options["positions"]) < 1 or options["seed"] < 0:
        raise ValueError(f"model name {name!r}: sizes must be positive; {usage}")
    config = GPT2Config(
        vocab_size=options["vocab"], n_positions=options["positions"], n_embd=embd,
        n_layer=layers, n_head=heads, n_inner=4 * embd,
    )  # fmt: skip
    return config, options["seed"]


def random_weights(config: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights under Hugging Face's names (GPT2LMHeadModel, head tied): GPT-2's
    initialisation (normal, std 0.02; output projections 0.02 / sqrt(2 * layers)), with biases
    and layer-norm parameters drawn around their usual 0 and 1 so a misplaced one shows."""
    rng = np.random.default_rng(seed)
    e, f = config.n_embd, config.n_inner
    proj_std = 0.02 / np.sqrt(2 * config.n_layer)

    def normal(shape, std=0.02, mean=0.0):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    out = {"transformer.wte.weight": normal((config.vocab_size, e)),
           "transformer.wpe.weight": normal((config.n_positions, e), 0.01)}  # fmt: skip
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        out |= {
            h + "ln_1.weight": normal(e, 0.1, 1.0), h + "ln_1.bias": normal(e),
            h + "attn.c_attn.weight": normal((e, 3 * e)), h + "attn.c_attn.bias": normal(3 * e),
            h + "attn.c_proj.weight": normal((e, e), proj_std), h + "attn.c_proj.bias": normal(e),
            h + "ln_2.weight": normal(e, 0.1, 1.0), h + "ln_2.bias": normal(e),
            h + "mlp.c_fc.weight": normal((e, f)), h + "mlp.c_fc.bias": normal(f),
            h + "mlp.c_proj.weight": normal((f, e), proj_std), h + "mlp.c_proj.bias": normal(e),
        }  # fmt: skip
    out |= {"transformer.ln_f.weight": normal(e, 0.1, 1.0), "transformer.ln_f.bias": normal(e)}
    return out


# ---- the forward pass, from nn blocks ----------------------------------------------------------

#: Logits from the final hidden state and the tied token embedding (`e` outputs, `v` input).
HEAD = "..b.. | e; v -> e => ..b.. | v"


def _table(label: str, rows: int, config: GPT2Config, params: nn.init.Params) -> Tensor:
    return nn.init.parameter(params, label, batch_dims=[], input_dims=[rows],
                             output_dims=[config.n_embd])  # fmt: skip


def token_embedding(ids: Tensor, config: GPT2Config, params: nn.init.Params = None) -> Tensor:
    """`embed.word.w` at the token ids (`..b.., seq |`): `..b.., seq | embd`."""
    return ops.embed(_table("embed.word.w", config.vocab_size, config, params), ids)


def position_embedding(
    positions: Tensor, config: GPT2Config, params: nn.init.Params = None
) -> Tensor:
    """`embed.pos.w` at the positions (`..b.., seq |`, data: a decoding step's position too)."""
    return ops.embed(_table("embed.pos.w", config.n_positions, config, params), positions)


def _widened(t: Tensor) -> Tensor:
    return ops.cast(t, "float32") if t.dtype.itemsize < 4 else t


def hidden_states(
    ids: Tensor,
    positions: Tensor,
    config: GPT2Config,
    *,
    cache: nn.KVCache | None = None,
    params: nn.init.Params = None,
) -> list[Tensor]:
    """GPT2Model's hidden states: the sum of the embeddings, each pre-norm causal block's
    output (`n_layer`), and `ln_f`'s; each `..b.., seq | embd`."""
    # Activations are float32 whatever the weights' type: 16-bit embeddings are widened
    # before they are summed (each row is exact in float32; only their sum would round).
    x = _widened(token_embedding(ids, config, params)) + _widened(
        position_embedding(positions, config, params)
    )
    states = [nn.dims.with_rows(x, output=[config.n_embd])]
    for i in range(config.n_layer):
        states.append(nn.transformer_block(
            states[-1], config.n_head, f"layer{i}", True,
            mlp_ratio=config.n_inner / config.n_embd, eps=config.layer_norm_epsilon,
            cache=cache, params=params,
        ))  # fmt: skip
    states.append(nn.layer_norm(states[-1], "ln_f", config.layer_norm_epsilon, params=params))
    return states


def head(h: Tensor, config: GPT2Config, params: nn.init.Params) -> Tensor:
    """The logits (`..b.., seq | vocab`) of the final hidden state: the token embedding's table
    (`params["embed.word.w"]`, created if absent) is the output head (tied)."""
    return ops.einsum(HEAD, h, _table("embed.word.w", config.vocab_size, config, params))


def logits(
    ids: Tensor,
    positions: Tensor,
    config: GPT2Config,
    *,
    cache: nn.KVCache | None = None,
    params: nn.init.Params = None,
) -> Tensor:
    """GPT2LMHeadModel's logits (`..b.., seq | vocab`) for token ids and their positions: the
    embeddings, `n_layer` pre-norm causal transformer blocks, `ln_f`, and the head tied to
    `embed.word.w`. With `cache`, the tokens continue the sequence the cache holds; `params`
    shares the parameters with another build (a decoding step and a whole sequence)."""
    params = {} if params is None else params  # the head reads the token embedding's table
    states = hidden_states(ids, positions, config, cache=cache, params=params)
    return head(states[-1], config, params)
