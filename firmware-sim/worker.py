"""The one thread a simulated device runs on."""

from __future__ import annotations

import threading
from typing import Self


class Worker:
    """``start()`` runs ``_run`` on a daemon thread until ``stop()``; ``_stop`` is its signal."""

    thread_name = "sim"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._stop.clear()
        self._on_start()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _on_start(self) -> None:
        """Hook: reset what a (re)start needs, in the caller's thread."""

    def _run(self) -> None:
        raise NotImplementedError
