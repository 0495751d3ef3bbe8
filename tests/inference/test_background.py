"""The background consumer: order, bounded waiting, errors reach the producer."""

import threading
import time

import pytest

from rsfusion.inference.background import Background


def test_items_are_consumed_in_order_in_another_thread():
    seen, threads = [], set()

    def consume(item):
        threads.add(threading.current_thread().name)
        seen.append(item)

    with Background(consume, depth=1) as sink:
        for i in range(20):
            sink.put(i)
    assert seen == list(range(20))
    assert threads == {"rsfusion-sink"}


def test_an_error_in_the_consumer_is_raised_by_the_producer():
    def consume(item):
        if item == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Background(consume) as sink:  # noqa: PT012
        for i in range(100):
            sink.put(i)
            time.sleep(0.001)
    with pytest.raises(OSError, match="disk full"), Background(consume) as sink:
        sink.put(3)  # fails after the last put: raised by close()


def test_leaving_on_an_error_stops_the_thread_without_consuming_the_rest():
    seen = []
    started, release = threading.Event(), threading.Event()

    def consume(item):
        started.set()
        release.wait()
        seen.append(item)

    sink = Background(consume, depth=4)
    with pytest.raises(KeyboardInterrupt), sink:  # noqa: PT012
        for i in range(4):
            sink.put(i)
        started.wait()  # item 0 is being consumed (held), 1..3 wait
        threading.Timer(0.2, release.set).start()  # item 0 finishes while the sink aborts
        raise KeyboardInterrupt
    assert not sink._thread.is_alive()
    assert seen == [0]  # the waiting items were dropped
