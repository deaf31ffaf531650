""""Play layers": draw every layer in turn without blocking the page.

The frames are drawn by a fragment that reruns itself every ``interval`` seconds while playing, so
the rest of the page is neither rerun nor held up by sleeps (widgets stay usable). Starting and
stopping are the only full reruns: they switch the fragment's timer on and off.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

PLAY_SECONDS = 0.6  # one frame per layer


def play_layers(key: str, n_layers: int, draw: Callable[[int], None], *, label: str = "▶ Play layers",
                interval: float = PLAY_SECONDS, help: str | None = None, container=None) -> bool:
    """A button that plays ``draw(layer)`` for layer 0 .. n_layers - 1; True while it plays (the
    caller then leaves out its still chart, which the frames replace)."""
    frame_key = f"{key}_frame"
    if (container or st).button(label, key=key, disabled=n_layers < 2, help=help):
        st.session_state[frame_key] = 0
        st.rerun()  # a full run starts the fragment's timer
    playing = st.session_state.get(frame_key) is not None

    @st.fragment(run_every=interval if playing else None)
    def frames() -> None:
        frame = st.session_state.get(frame_key)
        if frame is None:
            return
        if frame >= n_layers:
            st.session_state[frame_key] = None
            st.rerun()  # a full run stops the timer and draws the chosen layer again
        draw(frame)
        st.session_state[frame_key] = frame + 1

    frames()
    return playing
