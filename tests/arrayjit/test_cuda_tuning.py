"""Autotuning of matmul tile configurations: which nests and candidates, the record on disk and
its reuse (the timing replaced by a fake where there is no GPU), and on a GPU the real thing."""

from __future__ import annotations

import types

import numpy as np
import pytest
from cuda_runners import gpu_context
from test_cuda_matmul import fill, matmul

from arrayjit import cache
from arrayjit.backends.cuda import tuning as device_tuning
from arrayjit.lowering import compile_to_ir
from arrayjit.runtime.runtime import cuda_usable
from arrayjit.schedule import gpu_matmul, tuning
from arrayjit.schedule.gpu_kernels import GpuOptions, plan_kernels
from arrayjit.schedule.gpu_matmul import CANDIDATES, CANDIDATES_TF32, MatmulConfig


def test_tunable_nests_are_the_matmuls_by_key():
    code, *_ = matmul(300, 100, 200)
    stmt = compile_to_ir(code, True)
    nests = tuning.tunable_nests(stmt, GpuOptions())
    ((key, plan),) = nests.items()
    assert key == gpu_matmul.config_key(plan.matmul, None) and key.endswith(" simt")
    assert "1x300x200x100 add/mul float32" in key
    assert list(tuning.tunable_nests(stmt, GpuOptions(allow_tf32=True)))[0].endswith(" tf32")


def test_candidates_that_do_not_fit_in_shared_memory_are_left_out():
    assert tuning.fitting(None, (4, 4), 227 * 1024) == list(CANDIDATES)
    small = tuning.fitting("tf32", (4, 4), 100 * 1024)
    assert small and all(c.shared_bytes(4, 4) <= 100 * 1024 for c in small)
    assert len(small) < len(CANDIDATES_TF32)


def test_record_round_trips(tmp_path):
    config = MatmulConfig(64, 64, 16, 3)
    path = tmp_path / "r.tune.json"
    path.write_text(tuning.record_text(config, {"a": 1.0}))
    assert tuning.read_record(path) == config


def fake_backend() -> types.SimpleNamespace:
    properties = types.SimpleNamespace(max_shared_memory_per_block_optin=227 * 1024)
    device = types.SimpleNamespace(name="Fake GPU", properties=properties)
    return types.SimpleNamespace(device=device, arch="90")


def test_tuning_times_once_picks_the_fastest_and_remembers_it(monkeypatch):
    monkeypatch.setattr(device_tuning, "nvrtc_version", lambda: "13.0")
    calls = []
    fastest = CANDIDATES[4]

    def fake_time(backend, nest, key, configs, options):
        calls.append(key)
        return {c.describe(): (0.5 if c == fastest else 1.0 + k) for k, c in enumerate(configs)}

    monkeypatch.setattr(device_tuning, "_time", fake_time)
    code, *_ = matmul(512, 256, 384)
    stmt = compile_to_ir(code, True)
    chosen = device_tuning.tune_matmuls(fake_backend(), stmt, GpuOptions())
    assert list(chosen.values()) == [fastest] and len(calls) == 1
    records = list(cache.cache_dir().glob("*.tune.json"))
    assert any(tuning.read_record(r) == fastest for r in records)
    # Another compile of the same nest (another routine, same shapes) reads the record.
    code, *_ = matmul(512, 256, 384)
    again = device_tuning.tune_matmuls(fake_backend(), compile_to_ir(code, True), GpuOptions())
    assert list(again.values()) == [fastest] and len(calls) == 1
    # The choice reaches the plan.
    (plan,) = plan_kernels(stmt, GpuOptions(matmul_configs=chosen))
    assert plan.matmul.config == fastest


@pytest.mark.skipif(not cuda_usable(), reason="CUDA backend: no usable NVIDIA GPU here")
def test_autotuned_matmul_on_the_gpu_is_exact_and_timed_once(monkeypatch):
    timed = []
    original = device_tuning._time

    def counting(*args):
        timed.append(args[2])
        return original(*args)

    monkeypatch.setattr(device_tuning, "_time", counting)
    ctx = gpu_context()
    ctx.backend.autotune = True
    try:
        for _ in range(2):
            code, a, b, c = matmul(520, 260, 390)
            x, y = fill(np.random.default_rng(0), a, b)
            ctx.compile(code).run()
            np.testing.assert_array_equal(c.host(), x @ y)
    finally:
        ctx.backend.autotune = False
    assert len(timed) == 1
