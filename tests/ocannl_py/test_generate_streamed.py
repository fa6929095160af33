"""Streamed GPT-2 decoding on the C backend: 16-bit weights (bf16, fp16) against transformers'
GPT2LMHeadModel holding the same rounded weights, and a 1000-token run whose memory stays flat."""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from arrayjit.runtime.runtime import cuda_usable
from ocannl_py import Context, models
from ocannl_py.models import gpt2
from ocannl_py.models.generate import Decoder
from ocannl_py.models.token_ids import ids_term, set_ids

sys.path.insert(0, str(Path(__file__).parent.parent / "arrayjit"))
from cuda_runners import runner  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="PyTorch is the reference (test extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference")

SMALL = "gpt2-random:2,16,4,vocab=50,positions=32,seed=1"
PROMPT = [3, 17, 5]
#: Every stage streams (none kept resident), through two slots.
STREAMED = {"budget": "80KiB", "stream_options": {"keep_resident": False}}
#: Unit roundoff (half the spacing of values near 1) of the 16-bit types.
ROUNDOFF = {"bfloat16": 2.0**-9, "float16": 2.0**-11}
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: The token and position ids (int32, one each), copied in with the embeddings' weights.
IDS_BYTES = 8


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ckpt = models.checkpoint(SMALL)
    return ckpt, ckpt.write_folder(tmp_path_factory.mktemp("gpt2"))


def reference(folder: Path, dtype: str | None):
    """transformers' model in float32, its weights rounded to `dtype` and widened back."""
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    if dtype is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(TORCH_DTYPES[dtype]).float())
    return model


def greedy(model, prompt: list[int], tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False,
                             pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def step_logits(decoder: Decoder, sequence: list[int]) -> np.ndarray:
    decoder.cache.reset()
    return np.stack([decoder.next_logits(t, p) for p, t in enumerate(sequence)])


@pytest.mark.parametrize(
    "dtype, budget", [("bfloat16", "streamed"), ("float16", "streamed"), ("bfloat16", None)]
)
def test_16bit_weights_equal_transformers_with_the_same_rounded_weights(small, dtype, budget):
    """The comparison: transformers' GPT2LMHeadModel in float32 whose weights are our 16-bit
    weights widened back (torch's rounding, to nearest even as ours). Both then compute the same
    function in float32 (we widen each 16-bit read exactly, keep activations and sums in
    float32), so the ids are equal and the logits agree to the float32 tolerance of the fp32
    test. Running torch in bf16 would round activations too, a different computation. As a
    check that this sees the rounding, the model with the original float32 weights lies outside
    that tolerance, within 4u of the logits' scale (u: the type's unit roundoff; each weight
    moves by at most u relative, and the 4 weighted stages add such errors to first order)."""
    ckpt, folder = small
    options = STREAMED if budget else {}
    decoder = Decoder.from_checkpoint(ckpt, Context("c"), 16, weights_dtype=dtype,
                                      progress=False, **options)  # fmt: skip
    assert {p.dtype.name for p in decoder.params.values()} == {dtype}
    result = decoder.generate(PROMPT, 12)
    rounded = reference(folder, dtype)
    # Our conversion (when the weights were loaded) rounds as torch's.
    table = decoder.params["embed.word.w"].value.astype(np.float32)
    np.testing.assert_array_equal(table, rounded.transformer.wte.weight.detach().numpy().T)
    assert result.ids == greedy(rounded, PROMPT, 12)
    assert len(set(result.ids)) > 1

    sequence = PROMPT + result.ids
    ours = step_logits(decoder, sequence)
    with torch.no_grad():
        expected = rounded(input_ids=torch.tensor([sequence])).logits[0].numpy()
        exact = reference(folder, None)(input_ids=torch.tensor([sequence])).logits[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    scale = np.abs(exact).max()
    assert not np.allclose(ours, exact, rtol=1e-4, atol=1e-5)
    assert np.abs(ours - exact).max() <= 4 * ROUNDOFF[dtype] * scale

    if budget:
        # Half the bytes of the same plan with float32 weights are streamed.
        fp32 = Decoder.from_checkpoint(ckpt, Context("c"), 16, progress=False, **STREAMED)
        fp32.generate(PROMPT, 2)
        stats, stats32 = decoder.step.stats, fp32.step.stats
        assert stats.streamed_stages == stats32.streamed_stages == ckpt.config.n_layer + 2
        assert 2 * (stats.bytes_copied - IDS_BYTES) == stats32.bytes_copied - IDS_BYTES > 0
        assert stats.peak_device_bytes < stats32.peak_device_bytes


def test_16bit_weights_errors(small):
    ckpt, _ = small
    with pytest.raises(ValueError, match="weights must be floats, not int32"):
        Decoder(ckpt.config, Context("c"), 8, weights_dtype="int32", progress=False)
    shared = Decoder(ckpt.config, Context("c"), 8, progress=False).params
    with pytest.raises(ValueError, match="parameter 'embed.word.w' is float32, not the weights'"):
        Decoder(ckpt.config, Context("c"), 8, params=shared, weights_dtype="bfloat16")


@pytest.mark.parametrize("kind", ["emulator", "gpu"])
def test_16bit_weights_on_cuda_kernels(kind, tmp_path):
    """The CUDA backend's kernels (emulated on the CPU, or on a GPU) for one decoding position
    with bf16 weights: reductions reading bf16 weights beside float32 activations; the logits
    of transformers' model holding the same rounded weights (see the test above)."""
    run = runner(kind)
    ckpt = models.checkpoint("gpt2-random:1,64,2,vocab=96,positions=16,seed=2")
    ids, positions = ids_term("ids", [1, 1]), ids_term("positions", [1, 1])
    set_ids(ids, np.array([[17]]), 96, "ids")
    set_ids(positions, np.array([[0]]), 16, "positions")
    params = gpt2.parameters(ckpt.config, "bfloat16")
    logits = gpt2.logits(ids, positions, ckpt.config, params=params)
    ckpt.load_into(params, progress=False)
    run(logits.forward.lower())
    with torch.no_grad():
        expected = reference(ckpt.write_folder(tmp_path), "bfloat16")(
            input_ids=torch.tensor([[17]])
        ).logits.numpy()
    np.testing.assert_allclose(logits.value_node.host().reshape(expected.shape), expected,
                               rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.skipif(not cuda_usable(), reason="CUDA backend: no usable NVIDIA GPU here")
def test_16bit_weights_streamed_on_the_gpu(small):
    """The streamed plan on the GPU (pinned host memory, copy stream) with bf16 weights: the
    ids and logits of transformers' model holding the same rounded weights."""
    ckpt, folder = small
    decoder = Decoder.from_checkpoint(ckpt, Context("cuda"), 16, weights_dtype="bfloat16",
                                      progress=False, **STREAMED)  # fmt: skip
    result = decoder.generate(PROMPT, 12)
    rounded = reference(folder, "bfloat16")
    assert result.ids == greedy(rounded, PROMPT, 12)
    sequence = PROMPT + result.ids
    with torch.no_grad():
        expected = rounded(input_ids=torch.tensor([sequence])).logits[0].numpy()
    np.testing.assert_allclose(step_logits(decoder, sequence), expected, rtol=1e-4, atol=1e-5)
    assert decoder.step.stats.streamed_stages == ckpt.config.n_layer + 2


def resident_bytes() -> int:
    """This process's resident set (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from Linux's /proc")
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_1000_tokens_streamed_do_not_grow_memory(dtype):
    """1000 tokens decoded with every stage streamed (a KV cache of 1003 positions): from token
    10 to 1000, the plan's memory is the same allocation (same address, same bytes) and the
    process's RSS grows by less than 1 KiB per token (the decoder's lists of ids and times, and
    tracemalloc's records of them, take ~100 B per token: a buffer leaked per step by generated
    code or ctypes would show); from token 500 to 1000, the Python heap (tracemalloc, numpy's
    arrays included) outside those lists grows by less than 8 bytes per token (before, it grows
    once as the plan's version counters pass 256 and become int objects). A leak of one object
    per step, the smallest there is (24 B or more), grows it by 12 KB or more; the whole
    process's heap moves by a few hundred bytes with what else runs (504 B seen under load)."""
    ckpt = models.checkpoint("gpt2-random:2,16,4,vocab=50,positions=1024,seed=1")
    decoder = Decoder.from_checkpoint(ckpt, Context("c"), 1003, budget="1150KiB",
                                      stream_options={"keep_resident": False},
                                      weights_dtype=dtype, progress=False)  # fmt: skip
    executable = decoder.step.executable
    samples = {}

    def sample(n: int) -> None:
        if n in (10, 500, 1000):
            heap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, "*/ocannl_py/models/generate.py")]
            )
            stats = decoder.step.stats
            samples[n] = (sum(s.size for s in heap.statistics("filename")), resident_bytes(),
                          stats.peak_device_bytes, executable.base, stats.bytes_copied)  # fmt: skip

    tracemalloc.start()
    try:
        result = decoder.generate(PROMPT, 1000, on_token=sample)
    finally:
        tracemalloc.stop()
    assert len(result.ids) == 1000 and sorted(samples) == [10, 500, 1000]
    heap, rss, peak, base, copied = samples[10]
    stats = decoder.step.stats
    assert stats.streamed_stages == ckpt.config.n_layer + 2 and stats.resident_stages == 0
    assert stats.runs == len(PROMPT) + 999
    for n in (500, 1000):
        heap_n, rss_n, peak_n, base_n, copied_n = samples[n]
        assert (peak_n, base_n, copied_n) == (peak, base, copied)
        assert peak <= 1150 * 1024
        assert rss_n - rss < 1024 * (n - 10), f"RSS grew by {rss_n - rss} bytes by token {n}"
    grown = samples[1000][0] - samples[500][0]
    assert grown < 8 * 500, f"the Python heap grew by {grown} bytes over 500 tokens"
