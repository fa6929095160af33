"""The GPT-2 builder (nn blocks on the checkpoint's labels) and greedy generation with the KV
cache, against Hugging Face transformers' GPT2LMHeadModel with the same (random) weights."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, models
from ocannl_py.models import gpt2
from ocannl_py.models.generate import Decoder
from ocannl_py.models.token_ids import ids_term, set_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

# Seed 1: greedy decoding from the prompt below changes token part-way (position-dependent).
SMALL = "gpt2-random:2,16,4,vocab=50,positions=32,seed=1"
PROMPT = [3, 17, 5]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ckpt = models.checkpoint(SMALL)
    folder = ckpt.write_folder(tmp_path_factory.mktemp("gpt2"))
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    return ckpt, model


def sequence_terms(batch: int, length: int) -> tuple[oc.Tensor, oc.Tensor]:
    return ids_term("ids", [batch, length]), ids_term("positions", [batch, length])


def test_logits_equal_transformers(backend, small):
    ckpt, model = small
    config = ckpt.config
    values = np.random.default_rng(0).integers(0, config.vocab_size, (2, 7))
    ids, positions = sequence_terms(2, 7)
    set_ids(ids, values, config.vocab_size, "ids")
    set_ids(positions, np.broadcast_to(np.arange(7), (2, 7)), config.n_positions, "positions")
    params: dict = {}
    logits = gpt2.logits(ids, positions, config, params=params)
    assert sorted(params) == sorted(ckpt.rows())  # exactly the checkpoint's labels
    ckpt.load_into(params)
    Context(backend).forward(logits)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(values)).logits.numpy()
    assert logits.value.shape == (2, 7, config.vocab_size)
    np.testing.assert_allclose(logits.value, expected, rtol=1e-4, atol=1e-5)


def test_greedy_generation_equals_transformers(backend, small):
    ckpt, model = small
    decoder = Decoder.from_checkpoint(ckpt, Context(backend), 16, progress=False)
    result = decoder.generate(PROMPT, 12)
    with torch.no_grad():
        expected = model.generate(
            torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, len(PROMPT) :].tolist()
    assert result.ids == expected
    assert len(set(expected)) > 1  # the check sees positions and the cache, not one repeated id
    assert result.ms_per_token > 0 and result.peak_device_bytes > 0

    # Each step's logits (the cache holding the positions before it) equal the logits of the
    # whole sequence at that position; a second sequence after reset() starts afresh.
    sequence = PROMPT + result.ids
    with torch.no_grad():
        full = model(input_ids=torch.tensor([sequence])).logits[0].numpy()
    for reset in range(2):
        decoder.cache.reset()
        for position, token in enumerate(sequence[:6] if reset else sequence):
            step = decoder.next_logits(token, position)
            np.testing.assert_allclose(step, full[position], rtol=1e-4, atol=1e-5)


def test_streamed_generation_within_a_budget(small):
    """With a budget, the step runs as one stage per layer with the weights streamed in; the
    ids and every step's logits are those of the step compiled whole."""
    ckpt, _ = small
    whole = Decoder.from_checkpoint(ckpt, Context("c"), 16, progress=False)
    streamed = Decoder.from_checkpoint(ckpt, Context("c"), 16, budget="60KiB", progress=False)
    assert len(streamed.layers) == ckpt.config.n_layer + 2  # embeddings, blocks, ln_f + head
    expected = whole.generate(PROMPT, 10)
    result = streamed.generate(PROMPT, 10)
    assert result.ids == expected.ids
    stats = streamed.step.stats
    assert stats.streamed_stages + stats.resident_stages == 4
    assert stats.streamed_stages >= 1 and stats.bytes_copied > 0  # weights did stream
    assert result.peak_device_bytes == stats.peak_device_bytes <= 60 * 1024
    whole.cache.reset()
    streamed.cache.reset()
    for position, token in enumerate(PROMPT + result.ids[:3]):
        np.testing.assert_allclose(streamed.next_logits(token, position),
                                   whole.next_logits(token, position), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_decoder_errors(small):
    ckpt, _ = small
    with pytest.raises(ValueError, match="40 tokens .* exceed the 32 positions"):
        Decoder.from_checkpoint(ckpt, Context("c"), 40, progress=False)
    with pytest.raises(
        ValueError,
        match=r"the budget of 1024 bytes cannot hold stage \d \('(embeddings|layer0)'\): it needs",
    ):
        Decoder.from_checkpoint(ckpt, Context("c"), 8, budget="1KiB", progress=False)
    decoder = Decoder.from_checkpoint(ckpt, Context("c"), 8, progress=False)
    with pytest.raises(ValueError, match="3 prompt tokens and 6 new ones exceed the 8 positions"):
        decoder.generate(PROMPT, 6)
    with pytest.raises(ValueError, match=r"token: id 50 at \(0, 0\) is not in \[0, 50\)"):
        decoder.generate([50], 2)
    with pytest.raises(ValueError, match="no tokens"):
        decoder.generate([], 2)
    bert = models.BertConfig(10, 8, 1, 2, 32, 8, 2, 1e-12)
    with pytest.raises(ValueError, match="is a bert, not a GPT-2"):
        Decoder.from_checkpoint(
            dataclasses.replace(ckpt, kind="bert", config=bert), Context("c"), 4
        )


def test_set_ids_rejects_fractions_and_negatives():
    term = ids_term("ids", [1, 2])
    with pytest.raises(ValueError, match=r"ids: id -1 at \(0, 1\)"):
        set_ids(term, np.array([[0, -1]]), 5, "ids")
    with pytest.raises(ValueError, match=r"id 1.5 at \(0, 0\)"):
        set_ids(term, np.array([[1.5, 2]]), 5, "ids")
