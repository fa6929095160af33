"""Progress shown while a model loads or compiles: those steps take seconds to minutes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stage(description: str, progress: bool) -> Iterator[None]:
    """A progress bar with the elapsed time of one long step (loading, compiling), shown once it
    has taken a second and refreshed while it runs."""
    from tqdm.auto import tqdm

    with tqdm(total=1, desc=description, delay=1.0, disable=not progress,
              bar_format="{desc}: {elapsed}") as bar:  # fmt: skip
        done = threading.Event()

        def tick() -> None:
            if not done.wait(1.0):
                while not done.wait(0.5):
                    bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        if progress:
            ticker.start()
        try:
            yield
        finally:
            done.set()
            if progress:
                ticker.join()
        bar.update(1)
