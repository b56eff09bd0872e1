"""The supervisor's end of a library pipeline: the socket to the :class:`engine.api.pipeline.Pipeline`.

The supervisor of a pipeline that Python code runs (``python -m engine.api.service``, started by
:mod:`engine.api.pipeline`) takes its commands (stop, drained, add or remove a source) and sends its
snapshots, answers and outcome over one DEALER socket connected to the API's endpoint in the
API's private run directory; the records themselves go from the postprocessor to the API on their
own socket (``results_endpoint``). Each command, answer and report is a message type of its own
(:mod:`engine.protocol.messages`): :data:`API_COMMANDS` go to the supervisor, :data:`API_REPLIES`
come back, and each end dispatches them by type.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import zmq

from engine.protocol.channels import make_socket, pending
from engine.protocol.messages import (
    AddSourceMsg,
    DrainedMsg,
    Message,
    MessageError,
    OutcomeMsg,
    RemoveSourceMsg,
    RequestDoneMsg,
    RequestRefusedMsg,
    SeenMsg,
    SnapshotMsg,
    StartedMsg,
    StopRunMsg,
    decode,
)

log = logging.getLogger(__name__)

LAST_WORD_MS = 2000      # how long the outcome may take to reach the API when the link closes

# API → supervisor, and supervisor → API: what each end takes from the link
API_COMMANDS: tuple[type[Message], ...] = (StopRunMsg, SeenMsg, DrainedMsg, AddSourceMsg, RemoveSourceMsg)
API_REPLIES: tuple[type[Message], ...] = (StartedMsg, SnapshotMsg, RequestDoneMsg, RequestRefusedMsg, OutcomeMsg)


class ServiceLink:
    """Commands in, snapshots / answers / outcome out; ``orphaned`` once the API's process is gone."""

    def __init__(self, context: zmq.Context, control: str, results: str, owner_pid: int, view: str = "") -> None:
        self.socket = make_socket(context, zmq.DEALER, connect=control, hwm=10_000)
        self.results_endpoint = results
        self.view_endpoint = view     # where the postprocessor sends a service's live view ("": none)
        self.owner_pid = owner_pid
        self.drained = -1     # the API has every record of this many streams (their end marker)

    @property
    def orphaned(self) -> bool:
        return os.getppid() != self.owner_pid

    def receive(self) -> list[Message]:
        """The API's commands waiting now (:data:`API_COMMANDS`)."""
        return list(api_messages(self.socket, "the API", API_COMMANDS))

    def send(self, msg: Message) -> None:
        """One of :data:`API_REPLIES` to the API (dropped, with a warning, if it reads nothing)."""
        try:
            self.socket.send(msg.encode(), zmq.NOBLOCK)
        except zmq.Again:           # the API reads nothing for a long while: a snapshot less
            log.warning("the API is not reading; %s message dropped", msg.TYPE)

    def close(self) -> None:
        """Close the socket, giving the last messages (the outcome) time to reach the API."""
        self.socket.setsockopt(zmq.LINGER, LAST_WORD_MS)
        self.socket.close()


def api_messages(sock: zmq.Socket, sender: str, accepted: tuple[type[Message], ...]) -> Iterator[Message]:
    """The messages of the ``accepted`` types waiting on ``sock`` now; other messages are dropped,
    a malformed one with a warning naming ``sender``."""
    for data in pending(sock):
        try:
            msg = decode(data)
        except MessageError as exc:
            log.warning("rejected message from %s: %s", sender, exc)
            continue
        if isinstance(msg, accepted):
            yield msg
