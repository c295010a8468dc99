"""Work in threads for the app: a model several requests read under its lock (:class:`SharedModel`), a worker
thread's events as a generator (with cancellation), and a tokenizer whose calls are serialised (a fast tokenizer is
not safe to call from two threads)."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mape.base.errors import MapeError

log = logging.getLogger("mape.serving")


class RunCancelled(Exception):
    """Raised inside the engine's progress callback when the user stops a run or leaves."""


def stream(work) -> Iterator[tuple]:
    """Run ``work(emit, cancel)`` in a worker thread and yield its events, then ("done", value) or
    ("error", message) / ("cancelled",). Closing the generator asks the worker to stop."""
    q: queue.Queue = queue.Queue()
    cancel = threading.Event()
    threading.Thread(target=work_thread, args=(work, q, cancel), daemon=True, name="mape-engine").start()
    try:
        while True:
            try:
                event = q.get(timeout=0.3)
            except queue.Empty:
                event = ("tick",)  # lets the consumer check for a stop request between engine events
            yield event
            if event[0] in ("done", "error", "cancelled"):
                return
    finally:
        cancel.set()


def work_thread(work, q: queue.Queue, cancel: threading.Event) -> None:
    try:
        q.put(("done", work(q.put, cancel)))
    except RunCancelled:
        q.put(("cancelled",))
    except MapeError as exc:
        q.put(("error", str(exc)))
    except MemoryError:
        q.put(("error", "Out of memory; try a smaller retain sample or forget set."))
    except Exception as exc:  # noqa: BLE001 - shown as one line, logged with its traceback
        log.exception("run failed")
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if "out of memory" in msg.lower():
            q.put(("error", "The GPU ran out of memory; try a smaller retain sample or forget set."))
        else:
            q.put(("error", f"Unexpected {type(exc).__name__}: {msg[:300]}"))


def prep_emitter(emit):
    return lambda stage, frac, selection=None: emit(("prep", stage, frac))


class LockedTokenizer:
    """Serialises calls to the attribution tokenizer (shared by attributions, not by predictions)."""
    _lock = threading.Lock()

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kw):
        with self._lock:
            return self._tok(*args, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@dataclass
class SharedModel:
    """A model several requests read: every use holds ``lock``; changes happen on :meth:`copy`."""
    task: object
    lock: threading.RLock = field(default_factory=threading.RLock)

    def copy(self):
        with self.lock:
            return self.task.clone()

    def predict(self, enc) -> np.ndarray:
        with self.lock:
            return self.task.predict_proba(enc)
