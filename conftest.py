"""Shared by tests/ and tutorials/: compiled artifacts go to a temporary cache folder, never the
user's."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Set at import, before any test compiles anything, so no test touches ~/.cache/arrayjit.
_SESSION_CACHE = tempfile.mkdtemp(prefix="arrayjit-test-cache-")
os.environ["ARRAYJIT_CACHE_DIR"] = _SESSION_CACHE


@pytest.fixture(scope="session", autouse=True)
def arrayjit_cache_dir():
    """The per-session cache folder; removed when the session ends."""
    yield _SESSION_CACHE
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
