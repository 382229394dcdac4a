"""Ctrl-C for long commands: the first one asks the engine to stop after the current step, the second aborts."""

from __future__ import annotations

import signal
import threading
from typing import Callable

from rich.console import Console


def catch_ctrl_c(console: Console) -> tuple[threading.Event, Callable[[], None]]:
    """Install the SIGINT handler; returns (stop flag, restore the previous handler). Outside the main
    thread (where signals cannot be handled) only the flag is returned."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return stop, lambda: None

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping after the current step (Ctrl-C again to abort)[/]")

    old = signal.signal(signal.SIGINT, on_sigint)
    return stop, lambda: signal.signal(signal.SIGINT, old)
