"""A thread's wake-up call to a loop that sleeps in ``zmq.Poller.poll``: one eventfd.

OpenVINO's completion callbacks wake the inference worker's main loop this way. An eventfd costs
one ``write`` to set and one ``read`` to clear; a ZeroMQ inproc socket pair did the same job
through ZeroMQ's pipes and mailboxes at several times the CPU.
"""
from __future__ import annotations

import os


class Wakeup:
    """Set from any thread, cleared by the loop that polls :meth:`fileno` (``POLLIN`` while set)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def set(self) -> None:
        fd = self._fd
        if fd < 0:                           # closed: a callback that came after the end
            return
        try:
            os.eventfd_write(fd, 1)
        except OSError:                      # the counter is full: it is set already
            pass

    def clear(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:              # was not set
            pass

    def close(self) -> None:
        """Only once no thread can :meth:`set` any more (a closed fd number is soon reused)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
