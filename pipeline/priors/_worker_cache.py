"""A per-process cache of loaded models: each worker loads a model once, on first use.

Models live on the workers, never in the task graph (a prior or evidence source holds only
the small, hashable spec of its model). Loads are logged and recorded as ``LoadEvent`` so
that tests and logs can check "once per worker".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LoadEvent(NamedTuple):
    pid: int
    spec: Any
    seconds: float
    details: str  # what was loaded where, as logged


class WorkerCache(Generic[K, V]):
    """``get(spec)``: the process's model for ``spec``, built by ``load(spec)`` the first time
    (thread-safe: one load even when several threads of a worker ask at once)."""

    def __init__(self, what: str, load: Callable[[K], V], describe: Callable[[K, V], str]) -> None:
        self._what = what
        self._load = load
        self._describe = describe
        self._models: dict[K, V] = {}
        self._lock = threading.Lock()
        self._events: list[LoadEvent] = []

    def get(self, spec: K) -> V:
        model = self._models.get(spec)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(spec)
            if model is None:
                started = time.perf_counter()
                model = self._load(spec)
                seconds = time.perf_counter() - started
                self._models[spec] = model
                details = self._describe(spec, model)
                self._events.append(LoadEvent(os.getpid(), spec, seconds, details))
                log.info(
                    "loaded %s %s in %.2f s (pid %d)", self._what, details, seconds, os.getpid()
                )
        return model

    def events(self) -> tuple[LoadEvent, ...]:
        """Every load of this process."""
        return tuple(self._events)

    def clear(self) -> None:
        """Forget this process's models (frees their memory)."""
        with self._lock:
            self._models.clear()

    def __contains__(self, spec: object) -> bool:
        return spec in self._models

    def __len__(self) -> int:
        return len(self._models)

    def values(self) -> list[V]:
        """The loaded models."""
        return list(self._models.values())
