"""NVRTC's version for the cubin cache key is kept in the cache under a fingerprint of the NVRTC
library files (arrayjit.backends.cuda.nvrtc.nvrtc_version): a fresh process finding its routines
in the cache does not load NVRTC, and a changed library asks NVRTC again. No GPU needed: NVRTC
itself is replaced by a counter."""

from __future__ import annotations

import sys

import pytest

from arrayjit.backends.cuda import nvrtc


@pytest.fixture
def asked(monkeypatch, tmp_path):
    """A cache of its own, a fake NVRTC wheel on sys.path, and the calls to NVRTC, answered
    from `answers[0]`."""
    monkeypatch.setenv("ARRAYJIT_CACHE_DIR", str(tmp_path / "cache"))
    library = tmp_path / "site" / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"first")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    calls: list[str] = []
    answers = ["12.9"]

    def ask() -> str:
        calls.append(answers[0])
        return answers[0]

    monkeypatch.setattr(nvrtc, "_ask_nvrtc", ask)
    nvrtc.nvrtc_version.cache_clear()
    yield calls, answers, library
    nvrtc.nvrtc_version.cache_clear()


def test_a_fresh_process_reads_the_version_from_the_cache(asked):
    calls, _, library = asked
    assert nvrtc.nvrtc_version() == "12.9"
    assert any(path == str(library.resolve()) for path, _, _ in nvrtc._nvrtc_files())
    nvrtc.nvrtc_version.cache_clear()  # as a new process would start
    assert nvrtc.nvrtc_version() == "12.9"
    assert calls == ["12.9"]


def test_a_changed_library_asks_nvrtc_again(asked):
    calls, answers, library = asked
    assert nvrtc.nvrtc_version() == "12.9"
    library.write_bytes(b"a newer library")
    answers[0] = "13.1"
    nvrtc.nvrtc_version.cache_clear()
    assert nvrtc.nvrtc_version() == "13.1"
    assert calls == ["12.9", "13.1"]


def test_an_emptied_record_asks_nvrtc_again(asked, tmp_path):
    calls, _, _ = asked
    nvrtc.nvrtc_version()
    (record,) = (tmp_path / "cache").glob("nvrtc-version-*.txt")
    record.write_text("")
    nvrtc.nvrtc_version.cache_clear()
    assert nvrtc.nvrtc_version() == "12.9"
    assert calls == ["12.9", "12.9"]
