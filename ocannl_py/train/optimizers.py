"""Optimizers, each a function returning update code written in the cd DSL."""

from __future__ import annotations

from ocannl_py import shape as shapes
from ocannl_py.code import Code
from ocannl_py.dsl.cd import cd
from ocannl_py.tensor import Tensor
from ocannl_py.train.autodiff import _fill


def _buffer_like(p: Tensor, name: str) -> Tensor:
    """A zero-initialised state tensor of `p`'s shape (momentum, Adam moments)."""
    shape = shapes.Shape(f"{p.label}.{name}")
    t = Tensor(f"{p.label}.{name}", shape, differentiable=False)
    shapes.propagate(
        shapes.Pointwise(exact=True), shape, [p.shape], op_label=f"{name} of {p.label}"
    )
    t.init_code = _fill(t, 0.0, grad=False)
    return t


def _scalar(value: float | Tensor, label: str) -> Tensor:
    from ocannl_py.operation import inline_number

    return value if isinstance(value, Tensor) else inline_number(float(value), label)


def sgd_update(
    loss: Tensor,
    learning_rate: float | Tensor,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> Code:
    """Stochastic gradient descent with PyTorch's semantics for momentum, weight decay (added to
    the gradient) and Nesterov momentum."""
    if nesterov and momentum <= 0:
        raise ValueError("sgd_update: nesterov needs a positive momentum")
    lr = _scalar(learning_rate, "lr")
    code = Code(label=f"sgd_update_{loss.label}")
    for p in loss.param_list():
        names = {"p": p, "lr": lr}
        grad = "p.grad"
        if weight_decay:
            d = _buffer_like(p, "decayed_grad")
            code = code + cd(f"d =: p.grad + {weight_decay!r} * p", d=d, p=p)
            names["d"] = d
            grad = "d"
        if momentum:
            b = _buffer_like(p, "momentum")
            names["b"] = b
            code = code + cd(f"b =: {momentum!r} * b + {grad}", **names)
            if nesterov:
                code = code + cd(f"p =- lr * ({grad} + {momentum!r} * b)", **names)
            else:
                code = code + cd("p =- lr * b", **names)
        else:
            code = code + cd(f"p =- lr * {grad}", **names)
    return code


def adam_update(
    loss: Tensor,
    learning_rate: float | Tensor = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Code:
    """Adam; with `weight_decay`, AdamW's decoupled decay (`p -= lr * wd * p`)."""
    lr = _scalar(learning_rate, "lr")
    code = Code(label=f"adam_update_{loss.label}")
    step_count = _step_counter(loss)
    code = code + cd("n =+ 1", n=step_count)
    for p in loss.param_list():
        m, v = _buffer_like(p, "adam_m"), _buffer_like(p, "adam_v")
        names = {"p": p, "m": m, "v": v, "lr": lr, "n": step_count}
        b1, b2 = repr(beta1), repr(beta2)
        code = code + cd(f"m =: {b1} * m + (1 - {b1}) * p.grad", **names)
        code = code + cd(f"v =: {b2} * v + (1 - {b2}) * p.grad * p.grad", **names)
        if weight_decay:
            code = code + cd(f"p =- lr * {weight_decay!r} * p", **names)
        code = code + cd(
            f"p =- lr * (m / (1 - {b1} ** n)) / (sqrt(v / (1 - {b2} ** n)) + {eps!r})", **names
        )
    return code


def _step_counter(loss: Tensor) -> Tensor:
    label = f"{loss.label}.adam_step"
    t = Tensor(label, shapes.Shape(label, batch_dims=[], input_dims=[], output_dims=[]),
               differentiable=False)  # fmt: skip
    t.init_code = _fill(t, 0.0, grad=False)
    return t
