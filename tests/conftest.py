"""Shared test fixtures. The cache folder is set up by the root conftest.py."""

from __future__ import annotations

import pytest

BACKENDS = ["c", "cuda"]


def _cuda_skip_reason() -> str | None:
    from arrayjit.runtime.runtime import cuda_usable

    if cuda_usable():
        return None
    return "CUDA backend: no usable NVIDIA GPU, driver or cuda-python on this machine"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each test using it runs on every backend; CUDA skips where no GPU is usable."""
    if request.param == "cuda":
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@pytest.fixture(scope="session")
def _contexts() -> dict:
    return {}


@pytest.fixture
def context(backend, _contexts):
    """An arrayjit context of each backend, shared across tests (CUDA skips without a GPU)."""
    from arrayjit.runtime.runtime import Runtime

    if backend not in _contexts:
        _contexts[backend] = Runtime(backend)
    return _contexts[backend]


@pytest.fixture(scope="session")
def c_context():
    """One C context shared by the tests (a context holds no per-routine state)."""
    from arrayjit.runtime.runtime import Runtime

    return Runtime("c")
