"""Where a streamed decoding step's time goes: for one step of a GPT-2 (GPT-2 XL's shape by
default) through a device budget, when each stage's weights were copied and when each stage
computed (ms from the step's start, from the plan's CUDA events), and the copy rate.

    python bench/stream_timeline.py [--dtype bfloat16] [--budget 2GiB] [--layers 48]
"""

from __future__ import annotations

import argparse


def main() -> None:
    import ocannl_py as oc
    from ocannl_py.models import gpt2
    from ocannl_py.models.generate import Decoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--layers", type=int, default=48)
    args = parser.parse_args()
    config = gpt2.GPT2Config(vocab_size=50257, n_positions=64, n_embd=1600, n_layer=args.layers,
                             n_head=25, n_inner=6400)  # fmt: skip
    ctx = oc.Context("cuda")
    weights = None if args.dtype == "float32" else args.dtype
    decoder = Decoder(config, ctx, 16, budget=args.budget, weights_dtype=weights, progress=False)
    for position in range(6):
        decoder.next_logits(1, position)
    executable = decoder.step.executable
    start, end, copies, computes = executable._events
    executable.streams.synchronize()

    def ms(a, b) -> float:
        return 1e3 * executable.streams.seconds(a, b)

    plan = executable.plan
    copied = [step.stage for step in plan.steps if step.kind == "copy"]
    copy_of = {
        stage: (ms(start, b), ms(start, e)) for (b, e), stage in zip(copies, copied, strict=True)
    }
    print(f"step {ms(start, end):.2f} ms; {len(plan.streamed)} stages streamed: {plan.streamed}")
    busy = sum(e - b for b, e in copy_of.values())
    nbytes = plan.streamed_bytes()
    print(f"copies busy {busy:.2f} ms for {nbytes / 1e9:.3f} GB: {nbytes / busy / 1e6:.1f} GB/s")
    for stage, (b, e) in enumerate(computes):
        copy = copy_of.get(stage)
        extra = f"   copy {copy[0]:7.2f} .. {copy[1]:7.2f}" if copy else ""
        print(f"stage {stage:2d} compute {ms(start, b):7.2f} .. {ms(start, e):7.2f}{extra}")


if __name__ == "__main__":
    main()
