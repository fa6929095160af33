"""The cache under stress (issue 14): while processes compile, another keeps deleting every file
in the cache folder (entries, digests, records, temporary files) and now and then the folder
itself, as a user clearing the cache would. Every run must still give the right values: a
vanished file means a rebuild, never "compilation terminated" or FileNotFoundError."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Compiles `runs` routines, each new (its constant is) or, every third, one that all workers
# share; checks the values; prints one line per run.
WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from arrayjit.assignments import Accum, Constant, Fetch
    from arrayjit.indexing import identity_projections
    from arrayjit.runtime.runtime import Runtime
    from arrayjit.tnode import TNode

    worker, runs = int(sys.argv[1]), int(sys.argv[2])
    for r in range(runs):
        value = 7.25 if r % 3 == 0 else worker * 1000 + r + 0.5
        try:
            x, y = TNode("x", (4, 5)), TNode("y", (4, 5))
            code = Fetch(x, Constant(value)) + Accum(
                y, None, "exp", (x,), identity_projections((4, 5), 1)
            )
            Runtime("c").compile(code, f"run{r}").run()
            assert np.array_equal(x.host(), np.full((4, 5), value, np.float32))
            np.testing.assert_allclose(y.host(), np.exp(x.host()), rtol=1e-6)
            print("ok", flush=True)
        except Exception as exc:
            print("FAIL", type(exc).__name__, str(exc).replace("\\n", " | ")[:300], flush=True)
    """
)


def clear_repeatedly(folder: Path, stop: threading.Event, counts: dict) -> None:
    while not stop.is_set():
        counts["sweeps"] += 1
        if counts["sweeps"] % 25 == 0:
            shutil.rmtree(folder, ignore_errors=True)
            counts["folders"] += 1
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                os.unlink(entry.path)
                counts["files"] += 1
            except OSError:
                pass
        stop.wait(0.003)


@pytest.mark.slow
def test_compiling_while_the_cache_is_cleared(tmp_path):
    folder = tmp_path / "cache"
    workers, runs = 4, 14
    env = dict(os.environ, ARRAYJIT_CACHE_DIR=str(folder), PYTHONPATH=str(ROOT), ARRAYJIT_JOBS="1")
    stop, counts = threading.Event(), {"sweeps": 0, "files": 0, "folders": 0}
    clearer = threading.Thread(target=clear_repeatedly, args=(folder, stop, counts))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(w), str(runs)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    clearer.start()
    try:
        outputs = [p.communicate(timeout=600) for p in processes]
    finally:
        stop.set()
        clearer.join()
    lines = [line for out, _ in outputs for line in out.splitlines()]
    failures = [line for line in lines if line != "ok"]
    errors = [err for p, (_, err) in zip(processes, outputs, strict=True) if p.returncode]
    assert not errors, errors[0]
    assert len(lines) == workers * runs >= 50
    assert not failures, f"{len(failures)} of {len(lines)} runs failed: {failures[:3]}"
    assert counts["files"] > 100, counts  # the clearing really happened while they compiled
