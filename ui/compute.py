"""A process-wide bound on model computations from concurrent sessions (attribution, predictions).

Every Streamlit session runs its script in its own thread of one server process, and the models are
shared (``st.cache_resource``). Without a bound, ten visitors asking at once run ten attributions at
once: memory grows with the visitors and each of them waits as long as all of them together. And two
runs on one model must not overlap at all: attribution registers forward hooks on the shared
model's modules, so a second run would read the first one's activations.

``ComputeGate.hold(key)`` admits at most ``slots`` computations at a time and one per ``key`` (the
model); the others wait in the order the lock grants. It is re-entrant per thread (a cached
computation that calls another one, as the deletion curve calls the attribution it ranks by, holds
the gate once). ``waiting()`` says how many requests are queued, for the page's queue message.
"""
from __future__ import annotations

import os
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

ENV_SLOTS = "VL_LENS_COMPUTE_SLOTS"


class ComputeGate:
    """At most ``slots`` computations at once in this process, one per key."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"compute slots must be at least 1, got {slots}")
        self.slots = slots
        self._slots = threading.BoundedSemaphore(slots)
        self._keys: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._running = 0
        self._waiting = 0

    def _count(self, running: int = 0, waiting: int = 0) -> None:
        with self._mutex:
            self._running += running
            self._waiting += waiting

    def running(self) -> int:
        with self._mutex:
            return self._running

    def waiting(self) -> int:
        with self._mutex:
            return self._waiting

    def busy(self) -> bool:
        """True when a new request would wait (all slots taken, or someone already queued)."""
        with self._mutex:
            return self._waiting > 0 or self._running >= self.slots

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:  # this thread already holds the gate: a nested computation
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with self._mutex:
            key_lock = self._keys[key]
        self._count(waiting=1)
        try:
            key_lock.acquire()
            try:
                self._slots.acquire()
            except BaseException:
                key_lock.release()
                raise
        finally:
            self._count(waiting=-1)
        self._count(running=1)
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            self._count(running=-1)
            self._slots.release()
            key_lock.release()


def slots_from_env(env=os.environ) -> int:
    """``VL_LENS_COMPUTE_SLOTS`` (default 2: a CPU Space has 2 vCPU and torch uses both)."""
    raw = env.get(ENV_SLOTS, "").strip()
    try:
        return max(1, int(raw)) if raw else 2
    except ValueError:
        return 2


# The one gate of this process (module state lives as long as the server process).
GATE = ComputeGate(slots_from_env())


def queue_message(gate: ComputeGate) -> str | None:
    """The line a visitor sees when their request would wait; None when a slot is free."""
    if not gate.busy():
        return None
    ahead = gate.running() + gate.waiting()
    return (f"{ahead} request{'s' if ahead != 1 else ''} from other visitors {'are' if ahead != 1 else 'is'} "
            f"being computed (at most {gate.slots} at a time, one per model); yours starts when they finish.")


@contextmanager
def queue_notice(gate: ComputeGate = GATE) -> Iterator[None]:
    """Show ``queue_message`` above the page's results while the block computes, if it must wait."""
    import streamlit as st

    slot = st.empty()
    msg = queue_message(gate)
    if msg:
        slot.info(msg, icon="⏳")
    try:
        yield
    finally:
        slot.empty()
