"""Greedy GPT-2 generation with a key/value cache: one compiled step routine (one token in, the
next token's logits out) runs for every position, the position being data, so the prompt is read
and new tokens are produced by the same routine; with a device memory budget, that step is
streamed, one stage per layer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from arrayjit.tnode import MemoryMode
from ocannl_py import nn
from ocannl_py.context import Context, Routine, StreamedRoutine, forward_stages
from ocannl_py.models import gpt2
from ocannl_py.models.progress import stage
from ocannl_py.models.token_ids import ids_term, set_ids


@dataclass(frozen=True)
class Generation:
    """The generated token ids (the prompt not included), the mean wall time of one step (token
    in, logits read, argmax taken) over every step run, and the device bytes the step holds."""

    ids: list[int]
    ms_per_token: float
    peak_device_bytes: int


def device_bytes(routine: Routine | StreamedRoutine) -> int:
    """The device memory a routine holds: a streamed one's plan (`stats.peak_device_bytes`),
    else the bytes of the buffers it binds (weights, cache, activations; virtual ones are
    computed inline and take none)."""
    if isinstance(routine, StreamedRoutine):
        return routine.stats.peak_device_bytes
    tnodes = {id(t): t for t in routine.executable.compiled.tnodes}.values()
    return sum(t.size * t.dtype.itemsize for t in tnodes if t.memory_mode is not MemoryMode.VIRTUAL)


class Decoder:
    """A GPT-2 compiled for greedy decoding of sequences of up to `max_len` tokens: its
    parameters are `params` (shared with another build, e.g. a trained model; those missing are
    created), filled by `load` (called with them before compiling) when given.

    With `budget` (device bytes, or a text such as "2GiB"), the step is streamed: one stage per
    layer (`layers`: the embeddings, each block, then `ln_f` and the head), the weights kept in
    host memory and copied in while the stage before computes (`Context.compile_streamed`, given
    `stream_options`: `slots`, `keep_resident`, `host_memory`, and `keep`, by default the logits).
    With `weights_dtype` ("bfloat16" or "float16"), the parameters are stored in that type
    (`gpt2.parameters`: half the bytes to hold and stream) and read widened: activations, the
    cache and every sum stay float32."""

    def __init__(
        self,
        config: gpt2.GPT2Config,
        ctx: Context,
        max_len: int,
        *,
        params: dict | None = None,
        load: Callable[[dict], None] | None = None,
        budget: int | str | None = None,
        stream_options: dict | None = None,
        weights_dtype: str | None = None,
        progress: bool = True,
    ) -> None:
        if max_len > config.n_positions:
            raise ValueError(
                f"generate: {max_len} tokens (prompt and new ones) exceed the {config.n_positions} "
                "positions of the model"
            )
        self.config = config
        self.max_len = max_len
        self.progress = progress
        self.cache = nn.KVCache(max_len)
        self.token = ids_term("token", [1, 1])
        self.position = ids_term("position", [1, 1])
        self.params = {} if params is None else params
        if weights_dtype is not None:
            self.params = gpt2.parameters(config, weights_dtype, self.params)
        states = gpt2.hidden_states(
            self.token, self.position, config, cache=self.cache, params=self.params
        )
        self.logits = gpt2.head(states[-1], config, self.params)
        self.layers = [*states[:-1], self.logits]
        if load is not None:
            load(self.params)
        # The cache's update stores each layer's new keys and values (computed by the layers'
        # stages, kept as activations) and advances the position: after the last layer.
        update = self.cache.update(self.logits)
        with stage("compiling the decoding step", progress):
            if budget is None:
                self.step = ctx.compile(self.logits.forward + update, "decode_step")
            else:
                stages = forward_stages(*self.layers)
                stages[-1] = stages[-1] + update
                names = ["embeddings", *(f"layer{i}" for i in range(config.n_layer)), "head"]
                # Only the logits are read after a step; the cache's keys and values and its
                # position are kept as state (read before the stage that writes them), the
                # other activations share memory by live range.
                options = {"keep": [self.logits], **(stream_options or {})}
                self.step = ctx.compile_streamed(stages, budget, names=names, **options)

    @classmethod
    def from_checkpoint(
        cls, checkpoint, ctx: Context, max_len: int, *, budget: int | str | None = None,
        stream_options: dict | None = None, weights_dtype: str | None = None,
        progress: bool = True,
    ) -> Decoder:  # fmt: skip
        """A decoder of a GPT-2 checkpoint (`models.checkpoint(...)`), its weights loaded
        (converted once to `weights_dtype` when given)."""
        if not isinstance(checkpoint.config, gpt2.GPT2Config):
            raise ValueError(f"generate: {checkpoint.name!r} is a {checkpoint.kind}, not a GPT-2")

        def load(params: dict) -> None:
            with stage(f"loading {checkpoint.name}", progress):
                checkpoint.load_into(params, progress=progress)

        return cls(checkpoint.config, ctx, max_len, load=load, budget=budget,
                   stream_options=stream_options, weights_dtype=weights_dtype,
                   progress=progress)  # fmt: skip

    def next_logits(self, token: int, position: int) -> np.ndarray:
        """Feed one token at `position` (the cache holds the ones before); its logits."""
        set_ids(self.token, np.array([[token]]), self.config.vocab_size, "generate: token")
        set_ids(self.position, np.array([[position]]), self.max_len, "generate: position")
        self.step.run()
        return self.logits.value.reshape(self.config.vocab_size)

    def generate(
        self, prompt: Sequence[int], tokens: int, on_token: Callable[[int], None] | None = None
    ) -> Generation:
        """`tokens` new ids after `prompt`, each the argmax of the logits (ties: the first);
        `on_token(n)` is called after the `n`-th new token (e.g. to watch memory)."""
        prompt = [int(i) for i in prompt]
        if not prompt:
            raise ValueError("generate: the prompt has no tokens (give at least one id)")
        if tokens < 1:
            raise ValueError(f"generate: the number of new tokens must be positive, got {tokens}")
        if len(prompt) + tokens > self.max_len:
            raise ValueError(
                f"generate: {len(prompt)} prompt tokens and {tokens} new ones exceed the "
                f"{self.max_len} positions this decoder was built for"
            )
        from tqdm.auto import tqdm

        self.cache.reset()
        fed, out, times = list(prompt), [], []
        # The step at the prompt's last position gives the first new token.
        for position in tqdm(range(len(prompt) + tokens - 1), desc="generating", unit="token", delay=1.0,
                             disable=not self.progress):  # fmt: skip
            start = time.perf_counter()
            logits = self.next_logits(fed[position], position)
            times.append(time.perf_counter() - start)
            if position >= len(prompt) - 1:
                out.append(int(np.argmax(logits)))
                fed.append(out[-1])
                if on_token is not None:
                    on_token(len(out))
        return Generation(out, 1e3 * float(np.mean(times)), device_bytes(self.step))
