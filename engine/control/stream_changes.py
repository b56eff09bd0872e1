"""Streams added to and removed from a running pipeline: the supervisor's side.

A library pipeline (:meth:`engine.api.pipeline.Pipeline.add_source` / ``remove_source``) changes the streams
of a run while it goes on. A new stream is checked like a configured one (a missing file is one
line), takes a spare raw-slot range of the :class:`~engine.io.streams.Layout` and the decoder with the
fewest open streams, and is announced to the preprocessor and the postprocessor first: only when
both have confirmed does its decoder open it, so no frame of it reaches a stage that does not know
it. A removed stream's decoder stops its reader and sends its end, so the frames it had read come
out and its figures become final; its range is spare again once the decoder has every slot of it
back (``StreamClosedMsg``), and an add that finds no spare range meanwhile waits for that one. A
removed stream whose decoder dies before its end ends there, with what was written.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from engine.config import RunConfig, redact_uri, stream_name
from engine.config.streams import is_live_uri
from engine.control.accounting import Accounting
from engine.control.lifecycle import RunState
from engine.core.errors import ConfigError, OvstreamError
from engine.io.sources import open_source
from engine.io.streams import Layout, StreamSpec, is_live
from engine.protocol.apilink import ServiceLink
from engine.protocol.messages import (
    AddSourceMsg,
    AddStreamMsg,
    CloseStreamMsg,
    EndStreamMsg,
    Message,
    OpenStreamMsg,
    RemoveSourceMsg,
    RequestDoneMsg,
    RequestRefusedMsg,
    StreamAddedMsg,
    StreamClosedMsg,
    StreamFailedMsg,
    StreamFields,
)

log = logging.getLogger("engine.control.supervisor")     # the supervisor's lines: "[supervisor] …"

REPLIES = (StreamAddedMsg, StreamClosedMsg, StreamFailedMsg)   # what stages answer
STREAM_NAME = re.compile(r"[A-Za-z0-9._-]+")


class StreamChanges:
    """The :class:`~engine.protocol.messages.AddSourceMsg` / ``RemoveSourceMsg`` requests of a library
    pipeline's :class:`~engine.protocol.apilink.ServiceLink`, and the stages' answers (:data:`REPLIES`).
    Commands go out through ``send``; ``state`` gives the generation they carry."""

    def __init__(self, cfg: RunConfig, layout: Layout, link: ServiceLink | None, accounting: Accounting,
                 send: Callable[[str, Message], None], state: RunState, persistent: bool = False) -> None:
        self.cfg = cfg
        self.persistent = persistent             # a service: streams may be added after every one ended
        self.layout = layout
        self.link = link
        self.accounting = accounting
        self.send = send
        self.state = state
        self.adding: dict[int, set[str]] = {}    # added stream → stages yet to confirm they know it
        self.waiting: list[AddSourceMsg] = []    # add requests waiting for a range to come free

    def request(self, msg: AddSourceMsg | RemoveSourceMsg) -> None:
        """An add or remove request: answered now, or (an add while a removed stream's range is on
        its way back and none is spare) once that range is free."""
        if isinstance(msg, AddSourceMsg) and self.draining() and not self.layout.spare:
            self.waiting.append(msg)            # a removed stream's range comes free soon
        else:
            self._answer(msg)

    def on_ready(self, stage: str) -> None:
        """A stage (re)started: a new instance knows every stream there is."""
        for waiting in list(self.adding.values()):
            waiting.discard(stage)
        self._open_added()

    def on_restart(self) -> None:
        """Every stage restarts (from the ledgers): removed streams end now, and every new
        instance knows every stream."""
        self.forget_removed(self.layout.streams)
        self.adding.clear()

    def _answer(self, msg: AddSourceMsg | RemoveSourceMsg) -> None:
        try:
            name = self._add_source(msg.source) if isinstance(msg, AddSourceMsg) else self._remove_source(msg.name)
        except OvstreamError as exc:
            self._reply(RequestRefusedMsg(msg.request, str(exc)))
        else:
            self._reply(RequestDoneMsg(msg.request, name))

    def _reply(self, msg: RequestDoneMsg | RequestRefusedMsg) -> None:
        if self.link is not None:              # requests come only from a link
            self.link.send(msg)

    def draining(self) -> bool:
        """Some removed stream's slot range is not back yet."""
        return any(s.removed and s.slot_hi > s.slot_lo for s in self.layout.streams)

    def _retry_adds(self) -> None:
        """Adds that waited for a removed stream's range: answered once one is spare (or none
        will come)."""
        while self.waiting and (self.layout.spare or not self.draining()):
            self._answer(self.waiting.pop(0))

    def refuse_waiting(self) -> None:
        """The run is over: adds still waiting for a range are answered now, not left to time out."""
        while self.waiting:
            self._reply(RequestRefusedMsg(self.waiting.pop(0).request, "the pipeline has ended"))

    def _add_source(self, entry: dict) -> str:
        """Validate a new stream, give it a slot range and a decoder, and tell the preprocessor and
        postprocessor; its decoder opens it once both know it (so no frame of it can arrive
        before they do). Returns its name."""
        if self.accounting.finished and not self.persistent:
            raise ConfigError("the pipeline has ended: every stream is done")
        if not isinstance(entry.get("uri"), str):
            raise ConfigError("add_source needs a uri")
        base = {k: v for k, v in self.cfg.source.to_dict().items() if k not in ("uri", "name")}
        src = RunConfig.from_dict({"sources": [{**base, **entry}]}, origin="add_source").sources[0]
        taken = {s.name for s in self.layout.streams}
        if src.name and (src.name in taken or not STREAM_NAME.fullmatch(src.name)):
            raise ConfigError(f"stream name '{src.name}': " + ("taken (a name stays with its stream for the "
                                                                "pipeline's life)" if src.name in taken
                                                                else "use only letters, digits, '.', '_', '-'"))
        if not src.name:
            base_name = src.name = stream_name(src.uri)
            n = 1
            while src.name in taken:
                n += 1
                src.name = f"{base_name}-{n}"
        if not is_live_uri(src.uri):
            open_source(src).close()          # a missing file, an empty folder: one line now
        spec = self.layout.add(src.name, src.uri, is_live(src))
        self.cfg.sources.append(src)
        self.accounting.add_stream(spec)
        self.adding[spec.sid] = {"preprocessor", "postprocessor"}
        for name in self.adding[spec.sid]:
            self.send(name, AddStreamMsg(**_stream_fields(spec), generation=self.state.generation))
        log.info("stream %s added (%s, %s)", spec.name, redact_uri(spec.uri), self.layout.decoder_name(spec.decoder))
        return spec.name

    def _remove_source(self, name: str) -> str:
        """Close a stream: its decoder stops reading and sends its end; what it had read still
        comes out. Its slot range is reused once the decoder has every slot back."""
        spec = next((s for s in self.layout.streams if s.name == name and not s.removed), None)
        if spec is None:
            raise ConfigError(f"no open stream named '{name}' (open: "
                              f"{', '.join(s.name for s in self.layout.streams if not s.removed) or 'none'})")
        spec = self.layout.remove(spec.sid)
        if spec.sid in self.adding:          # not opened yet: nothing was read
            del self.adding[spec.sid]
            self.forget_removed([spec])
        else:                                # (an ended stream's decoder still gets its slots back)
            self.send(self.layout.decoder_name(spec.decoder), CloseStreamMsg(spec.sid, self.state.generation))
        log.info("stream %s removed", spec.name)
        return spec.name

    def _open_added(self) -> None:
        """Added streams that the preprocessor and postprocessor both know: their decoder opens them."""
        for sid in [sid for sid, waiting in self.adding.items() if not waiting]:
            del self.adding[sid]
            spec = self.layout.streams[sid]
            msg = OpenStreamMsg(**_stream_fields(spec), source=self.cfg.sources[sid].to_dict(),
                                generation=self.state.generation)
            self.send(self.layout.decoder_name(spec.decoder), msg)

    def on_reply(self, stage: str, msg: StreamAddedMsg | StreamClosedMsg | StreamFailedMsg) -> None:
        """A stage's answer about a stream: it knows an added one, a closed one's slots are all back,
        or (its decoder) it could not open one."""
        sid = msg.stream
        if not 0 <= sid < len(self.layout.streams):
            return
        if isinstance(msg, StreamAddedMsg):
            self.adding.get(sid, set()).discard(stage)
            self._open_added()
        elif isinstance(msg, StreamClosedMsg):          # every raw slot of it is back
            self.layout.release(sid)
            self._retry_adds()
        else:                                           # its decoder could not open it: it ends here
            log.error("stream %s: %s", self.layout.streams[sid].name, msg.error)
            self.layout.remove(sid)
            self.forget_removed([self.layout.streams[sid]])

    def forget_removed(self, specs: list[StreamSpec]) -> None:
        """Removed streams whose decoder is gone (or never read them): they end now, with what was
        written (their decoder's successor opens them no more), and their ranges are free."""
        for spec in specs:
            if not spec.removed:
                continue
            if spec.sid not in self.accounting.ended:
                self.send("postprocessor", EndStreamMsg(spec.sid, self.state.generation))
                self.accounting.end_stream(spec.sid)
            self.layout.release(spec.sid)
        self._retry_adds()


def _stream_fields(spec: StreamSpec) -> dict[str, Any]:
    """What a command carries of a stream (:class:`~engine.protocol.messages.StreamFields`)."""
    return {f.name: getattr(spec, f.name) for f in fields(StreamFields)}
