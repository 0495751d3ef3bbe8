"""One background thread that consumes items in order: prediction's blending and writing.

While the model runs on a batch, the previous batch's logits are blended into the row band,
finished rows are turned into classes and written (numpy and GDAL release the GIL for that
work), so the model's thread only hands over its logits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

_STOP = object()


class Background:
    """Run ``fn(item)`` for each :meth:`put` item, in order, in one thread.

    At most ``depth`` items wait (memory stays bounded). An error raised by ``fn`` is raised
    again by the next :meth:`put` or by :meth:`close`; leaving the ``with`` block on an error
    drops the waiting items and stops the thread before the error propagates.

    Example:
        >>> seen = []
        >>> with Background(seen.append) as sink:
        ...     for i in range(3):
        ...         sink.put(i)
        >>> seen
        [0, 1, 2]
    """

    def __init__(self, fn: Callable[[Any], None], depth: int = 2, name: str = "rsfusion-sink"):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if self._error is not None:
                continue  # failed: drain until told to stop
            try:
                self._fn(item)
            except BaseException as err:  # handed to the producer
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        """Queue ``item`` (waits while ``depth`` items wait); raises an earlier ``fn`` error."""
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is consumed; raises an ``fn`` error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop the waiting items and stop the thread."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._error = self._error or RuntimeError("aborted")
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> Background:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self._thread.is_alive():
            self.abort()
