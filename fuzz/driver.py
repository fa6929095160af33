"""The fuzzing loop: programs and parser inputs run in a worker process (a crash or a hang in
generated code is a finding, not the end of the run), counted, and each failure written as a
reproducer. Failures are grouped by a signature (what went wrong, without the numbers); the
first few of each group are written out."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import parsers
from fuzz.programs import generate
from fuzz.scripts import program_script

log = logging.getLogger("fuzz")

PROGRAM_TIMEOUT = 120.0  # seconds for one program: compile (2 routines) and run
PARSER_TIMEOUT = 20.0
WORKER_JOBS = 300  # a fresh worker after this many jobs: loaded libraries are never unloaded
REPRODUCERS_PER_SIGNATURE = 3


@dataclass
class Stats:
    programs: int = 0
    parser_inputs: int = 0
    failures: Counter = field(default_factory=Counter)  # signature -> count
    written: list[Path] = field(default_factory=list)

    @property
    def failure_count(self) -> int:
        return sum(self.failures.values())


# ---- the worker --------------------------------------------------------------------------


def _run_program(text: str) -> str | None:
    namespace = {"__name__": "fuzz_program"}
    try:
        exec(compile(text, "<fuzz program>", "exec"), namespace)
    except Exception as e:  # noqa: BLE001 - every error of a well-typed program is a finding
        frames = traceback.extract_tb(e.__traceback__)
        where = next((f"{f.filename}:{f.name}" for f in reversed(frames) if "ocannl_py" in f.filename
                      or "arrayjit" in f.filename), "")  # fmt: skip
        return f"{type(e).__name__} ({where}): {e}"
    failures = namespace["FAILURES"]
    return "\n".join(failures) if failures else None


def _worker(connection) -> None:
    logging.disable(logging.WARNING)
    while True:
        job = connection.recv()
        if job is None:
            return
        kind, payload = job
        if kind == "program":
            connection.send(_run_program(payload))
        else:
            target, text = payload
            connection.send(parsers.check(target, text))


class Worker:
    """A child process running jobs one at a time, restarted after a crash or a timeout."""

    def __init__(self) -> None:
        self.process = None
        self.jobs = 0

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.connection, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        self.jobs = 0

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.connection.send(None)
                self.process.join(5)
            except (BrokenPipeError, OSError):
                pass
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.process = None

    def run(self, job, timeout: float) -> str | None:
        if self.process is None or not self.process.is_alive() or self.jobs >= WORKER_JOBS:
            self.stop()
            self.start()
        self.jobs += 1
        self.connection.send(job)
        if not self.connection.poll(timeout):
            self.process.kill()
            self.process.join()
            self.process = None
            return f"Timeout: no result within {timeout:.0f} s (hang or endless loop)"
        try:
            return self.connection.recv()
        except EOFError:
            code = self.process.exitcode if self.process else None
            self.process.join()
            self.process = None
            return f"Crash: the worker died (exit code {code}, a negative code is a signal)"


# ---- signatures and reproducers -----------------------------------------------------------


def signature(kind: str, message: str) -> str:
    """What went wrong, without values, names or positions: failures of one cause group."""
    first = message.splitlines()[0]
    first = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first)
    first = re.sub(r"\b[a-z]+\d+\b", "t", first)
    first = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", first)
    first = re.sub(r"\(.*?\)", "(…)", first)
    return f"{kind}: {first[:140]}"


def write_reproducer(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def parser_reproducer(target: str, text: str, message: str) -> str:
    calls = {
        "parse_spec": "from ocannl_py.einsum import parse_spec, print_spec\nprint(print_spec(parse_spec(TEXT)))",
        "parse_op": "from ocannl_py.dsl.syntax import format_op, parse_op\nprint(format_op(parse_op(TEXT)))",
        "parse_cd": "from ocannl_py.dsl.syntax import format_cd, parse_cd\nprint(format_cd(parse_cd(TEXT)))",
    }
    body = calls.get(target, f"from fuzz.parsers import check\nprint(check({target!r}, TEXT))")
    return f'"""Parser fuzz failure ({target}): {message[:500]!r}"""\nTEXT = {text!r}\n{body}\n'


# ---- the loop -----------------------------------------------------------------------------


def fuzz(
    minutes: float,
    seed: int,
    out: Path,
    program_share: float = 0.7,
    include_known: bool = False,
    report=print,
) -> Stats:
    """Fuzz for `minutes`: programs for `program_share` of the time, parser inputs for the rest."""
    stats = Stats()
    rng = random.Random(seed)
    deadline = time.monotonic() + 60 * minutes
    program_time = parser_time = 0.0
    worker = Worker()
    next_report = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            start = time.monotonic()
            if program_time <= program_share * (program_time + parser_time + 1e-9):
                program_seed = rng.getrandbits(48)
                program = generate(program_seed, include_known=include_known)
                header = (f"fuzz program: seed {seed}, program seed {program_seed} "
                          f"({program.mode} values). Run: python <this file>")  # fmt: skip
                text = program_script(program, header)
                message = worker.run(("program", text), PROGRAM_TIMEOUT)
                stats.programs += 1
                if message:
                    _record(stats, out, "program", message, f"program_{program_seed}.py", text)
                program_time += time.monotonic() - start
            else:
                target = rng.choice(parsers.TARGETS)
                text = parsers.mutate(rng, parsers.seed_text(rng, target))
                message = worker.run(("parse", (target, text)), PARSER_TIMEOUT)
                stats.parser_inputs += 1
                if message:
                    name = f"parser_{target}_{stats.parser_inputs}.py"
                    _record(stats, out, target, message, name,
                            parser_reproducer(target, text, message))  # fmt: skip
                parser_time += time.monotonic() - start
            if time.monotonic() > next_report:
                next_report += 60
                report(f"... {stats.programs} programs, {stats.parser_inputs} parser inputs, "
                       f"{stats.failure_count} failures")  # fmt: skip
    finally:
        worker.stop()
    return stats


def _record(stats: Stats, out: Path, kind: str, message: str, name: str, text: str) -> None:
    key = signature(kind, message)
    stats.failures[key] += 1
    if stats.failures[key] <= REPRODUCERS_PER_SIGNATURE:
        path = write_reproducer(out, name, f"# {key}\n# {message[:2000]!r}\n{text}")
        stats.written.append(path)
        log.warning("failure (%s): %s -> %s", kind, message.splitlines()[0][:200], path)
