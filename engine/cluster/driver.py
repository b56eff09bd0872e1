"""The cluster driver: place the streams, run an engine per node share, survive node failures.

``ovstream run CONFIG --cluster ADDRESS`` connects to Ray, reads the alive nodes and their
capacity (:mod:`~engine.cluster.placement`), asks each node which of the run's files it can read
(:func:`~engine.cluster.host.readable`, a task on that node: a file stream goes only to a node
that can read it, and fails with one line when no alive node can), and starts for each node's
share of the streams one :class:`~engine.cluster.host.EngineHost` actor pinned to that node
(``NodeAffinitySchedulingStrategy``, holding ``per_stream`` × streams of the capacity resource, so
Ray's own accounting keeps other jobs from over-filling the node).

Engines write into folders on their own node; nothing is shared but Ray. The driver asks each
engine for its status and the next batch of its records (one call in flight per engine, the next
only once the batch is written: backpressure) and writes them, each frame once
(:class:`~engine.cluster.segments.Results`), into ``<output>/results.jsonl``; the engines' final
reports come the same way and are joined into one ``report.json``.

An engine whose actor or node died (Ray raises ``RayActorError``), whose engine process was
killed, or that has not answered for ``SILENT_S`` (or, running file streams only, read no frame
for ``STALL_S``), is *lost*: each unfinished stream waits to
resume at the frame after the last record the driver holds of it, on whichever node has room and
can read it (a new engine; a node that joined the cluster meanwhile counts). A stream that finds
no such node within ``[cluster] wait_s`` fails with one line: the driver never waits forever.
Ctrl-C stops every engine as Ctrl-C stops a local run, takes the records they still have, then
removes their folders and actors; the driver's death takes its actors with it (Ray), and an
engine dies with its actor (see :mod:`~engine.cluster.host`).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from engine.cluster.placement import Node, assign, capacity
from engine.cluster.segments import Results
from engine.cluster.view import ClusterDashboard, ClusterView, engine_row, render_cluster_summary, stream_row, totals_of
from engine.config import RunConfig
from engine.config.streams import is_live_uri
from engine.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ConfigError
from engine.io.run_folder import OutputDir
from engine.io.sources import _existing
from engine.io.streams import is_live
from engine.observe.metrics import Snapshot, StreamRow, stage_row

log = logging.getLogger(__name__)

POLL_S = 0.5                # an engine with no records ready is asked again after this long; the dashboard
NODES_S = 1.0               # how often the node list is read while streams wait for room
STOP_S = 15.0               # Ctrl-C: how long the engines get to stop before their actors are killed
DRAIN_S = 30.0              # Ctrl-C: how long the driver takes the stopped engines' last records
QUARANTINE_S = 30.0         # a node that lost an engine takes no streams for this long
START_S = 120.0             # an engine actor not started by then (its node gone meanwhile) is lost
SILENT_S = 30.0             # a running engine that has not answered for this long is lost
STALL_S = 300.0             # an engine of file streams only that has read no frame for this long is lost
PROBE_S = 30.0              # a node that has not said which files it reads by then reads none (asked again later)
CLOSE_S = 15.0              # a finished engine's folder removal
CONNECT_S = 10.0            # the cluster's address must answer within this


@dataclass
class Stream:
    """One stream of the config, across the engines that ran it."""

    name: str
    source: dict            # its SourceConfig as a dict (uri made absolute)
    live: bool
    path: str = ""          # the file or folder a node must be able to read ("" for a camera or URL)
    start: int = 0          # the frame id its next segment starts at
    state: str = "waiting"  # waiting | running | done | failed
    engine: str = ""        # the engine running it now
    moves: int = 0
    segments: list[tuple[str, int]] = field(default_factory=list)      # (engine id, first frame id)
    past: dict[str, int] = field(default_factory=dict)                 # figures of finished segments
    final_state: str = ""   # the last engine's word on it: ended | failed
    moved_at: float = 0.0   # when it was last taken from a lost engine (monotonic)
    waiting_since: float = 0.0
    why: str = ""           # why it failed, when the driver failed it


@dataclass
class Engine:
    """One engine actor and what the driver knows of it."""

    eid: str
    node_id: str
    node: str
    streams: list[str]
    actor: Any
    started: float
    state: str = "starting"         # starting | running | finished | lost | stopped | failed
    status: dict | None = None
    ref: Any = None                 # the outstanding start / poll call
    asked_at: float = 0.0           # when to ask next (0: as soon as the last answer is in)
    answered: float = 0.0           # when it last answered (monotonic)
    frames: int = -1                # frames its streams have read, by its latest status
    progressed: float = 0.0         # when that last grew (monotonic)
    returncode: int | None = None
    report: dict | None = None
    tail: str = ""


def import_ray():
    """Ray, or one line saying how to install it (exit 2)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("cluster mode needs Ray: pip install 'ovstream[cluster]' (or 'ray>=2.30')") from None
    return ray


def absolute_sources(cfg: RunConfig) -> list[dict]:
    """The streams as dicts, file paths that exist here made absolute (the nodes are asked
    whether they see them at that path; one that does not exist here is sent as written)."""
    out = []
    for src in cfg.sources:
        d = src.to_dict()
        if not is_live_uri(src.uri):
            path = _existing(src.uri.strip())
            if path is not None:
                d["uri"] = str(path.resolve())
        out.append(d)
    return out


def run_name() -> str:
    """The name of this run's folders on the nodes (``ovstream-[TAG-]cluster-<random>``)."""
    tag = os.environ.get("OVSTREAM_TAG", "")
    return f"ovstream-{tag + '-' if tag else ''}cluster-{uuid.uuid4().hex[:8]}"


class ClusterRun:
    """One run of a config's streams over a Ray cluster (see the module docstring)."""

    def __init__(self, ray: Any, cfg: RunConfig, address: str, output: Path, duration_s: float = 0.0) -> None:
        self.ray = ray
        self.cfg = cfg
        self.address = address
        self.output = output
        self.duration_s = duration_s
        self.streams = {src["name"]: Stream(src["name"], src, is_live(s), "" if is_live_uri(s.uri) else src["uri"])
                        for src, s in zip(absolute_sources(cfg), cfg.sources)}
        self.order = list(self.streams)
        self.results = Results(self.order, output / "results.jsonl" if cfg.output.jsonl else None)
        self.name = run_name()
        self.engines: dict[str, Engine] = {}
        self.nodes: dict[str, Node] = {}
        self.events: list[dict] = []
        self.interrupted = 0
        self.t0 = time.monotonic()
        self.t0_unix = time.time()
        self._next_nodes = 0.0
        self.quarantine: dict[str, float] = {}      # node id → until when it takes no streams
        self.reads: dict[str, set[str]] = {}        # node id → the file streams it can read
        self.probes: dict[str, tuple[Any, float]] = {}    # node id → (its readable() call, when asked)
        from engine.cluster.host import EngineHost, readable
        self.remote_host = ray.remote(EngineHost)
        self.remote_readable = ray.remote(readable)
        for st in self.streams.values():
            st.waiting_since = self.t0

    # ---- nodes and placement ----------------------------------------------------------------
    def refresh_nodes(self) -> list[Node]:
        """The alive nodes with their capacity and the streams this run holds on each."""
        cl = self.cfg.cluster
        nodes = {}
        for n in self.ray.nodes():
            if not n.get("Alive"):
                continue
            nid = n["NodeID"]
            label = f"{n.get('NodeManagerHostname') or n.get('NodeManagerAddress', '?')}:{nid[:6]}"
            used = sum(len(e.streams) for e in self.engines.values()
                       if e.node_id == nid and e.state in ("starting", "running"))
            nodes[nid] = Node(nid, label, capacity(n.get("Resources", {}), cl.resource, cl.per_stream), used)
        self.nodes = nodes
        self._next_nodes = time.monotonic() + NODES_S
        return list(nodes.values())

    def probe(self) -> None:
        """Ask every alive node that has not said yet which of the file streams it can read."""
        files = {st.name: st.path for st in self.streams.values() if st.path}
        if not files:
            self.reads = {nid: set() for nid in self.nodes}
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        now = time.monotonic()
        for nid in self.nodes:
            if nid not in self.reads and nid not in self.probes:
                ref = self.remote_readable.options(
                    num_cpus=0, max_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(list(files.values()))
                self.probes[nid] = (ref, now)
        if not self.probes:
            return
        refs = {ref: nid for nid, (ref, _) in self.probes.items()}
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            nid = refs[ref]
            del self.probes[nid]
            try:
                seen = set(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:
                log.warning("node %s could not say which files it reads: %s", nid[:6], _first_line(exc))
                continue
            self.reads[nid] = {name for name, path in files.items() if path in seen}
        for nid, (_ref, asked) in list(self.probes.items()):
            if now - asked > PROBE_S:
                log.warning("node %s did not say within %.0f s which files it reads: it takes none of them",
                            nid[:6], PROBE_S)
                del self.probes[nid]
                self.reads[nid] = set()

    def can_take(self, node: Node, st: Stream) -> bool:
        return node.node_id in self.reads and (not st.path or st.name in self.reads[node.node_id])

    def place(self) -> None:
        """Start engines for the streams that wait, on the nodes with room that can read them;
        fail the streams no node can take (see :meth:`give_up`)."""
        waiting = [s for s in self.order if self.streams[s].state == "waiting"]
        if not waiting or time.monotonic() < self._next_nodes:
            return
        nodes = self.refresh_nodes()
        self.probe()
        if self.probes and not self.engines:
            return              # the first placement waits for every node's word (at most PROBE_S): balanced
        now = time.monotonic()
        open_nodes = [n for n in nodes if n.capacity > 0 and self.quarantine.get(n.node_id, 0) <= now]
        chosen: dict[str, str] = {}
        for name in waiting:        # one at a time, so each goes where it can be read
            fit = [n for n in open_nodes if self.can_take(n, self.streams[name])]
            used = {nid: sum(v == nid for v in chosen.values()) for nid in (n.node_id for n in fit)}
            one = assign([name], [Node(n.node_id, n.label, n.capacity, n.used + used[n.node_id]) for n in fit])
            chosen.update(one)
        for node_id in dict.fromkeys(chosen.values()):
            self.start_engine(self.nodes[node_id], [s for s in waiting if chosen.get(s) == node_id])
        self.give_up([s for s in waiting if s not in chosen], nodes, now)

    def give_up(self, waiting: list[str], nodes: list[Node], now: float) -> None:
        """A file stream that no alive node can read (every one has said) fails now; any stream
        that has found no room for ``[cluster] wait_s`` fails then."""
        asked_all = bool(nodes) and all(n.node_id in self.reads for n in nodes)
        for name in waiting:
            st = self.streams[name]
            if st.path and asked_all and not any(name in self.reads[n.node_id] for n in nodes):
                self.fail(st, f"no node of the Ray cluster can read {st.path} ({len(nodes)} node(s) asked)")
            elif now - st.waiting_since > self.cfg.cluster.wait_s:
                self.fail(st, f"no node of the Ray cluster had room for it for {self.cfg.cluster.wait_s:g} s "
                              "([cluster] wait_s)")

    def fail(self, st: Stream, why: str) -> None:
        st.state, st.why = "failed", why
        log.error("stream %s: %s", st.name, why)

    def start_engine(self, node: Node, names: list[str]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        cl = self.cfg.cluster
        eid = f"e{len(self.engines) + 1}-{node.node_id[:6]}"
        amount = cl.per_stream * len(names)
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0,
                                   "scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False)}
        if cl.resource == "CPU":
            options["num_cpus"] = amount
        elif cl.resource == "GPU":
            options["num_gpus"] = amount
        else:
            options["resources"] = {cl.resource: amount}
        actor = self.remote_host.options(**options).remote(self.name, eid, cl.engine_dir)
        remaining = max(0.01, self.duration_s - (time.monotonic() - self.t0)) if self.duration_s > 0 else 0.0
        env = {k: v for k, v in os.environ.items() if k == "OVSTREAM_TAG"}   # names a test's run files
        now = time.monotonic()
        engine = Engine(eid, node.node_id, node.label, names, actor, now, answered=now, progressed=now)
        engine.ref = actor.start.remote(self.engine_config(names), remaining, env)
        self.engines[eid] = engine
        for name in names:
            st = self.streams[name]
            st.state, st.engine = "running", eid
            st.segments.append((eid, st.start))
        log.info("engine %s on %s: %s", eid, node.label, ", ".join(f"{n}@{self.streams[n].start}" for n in names))

    def engine_config(self, names: list[str]) -> dict:
        """The share's config: its streams (each from where it resumes), results and status for
        the driver (the host sets the folder on its node), no dashboard, no /metrics port, no cluster."""
        data = self.cfg.to_dict()
        data["sources"] = [{**self.streams[n].source, "start": self.streams[n].start} for n in names]
        data["source"] = data["sources"][0]
        # results.jsonl is how the records reach the driver: written even when the user's config has jsonl off
        data["output"] = {**data["output"], "status": True, "report": True, "jsonl": True}
        data["dashboard"] = {**data["dashboard"], "enabled": False}
        data["metrics"] = {**data["metrics"], "port": 0, "linger_s": 0.0}
        data["cluster"] = {**data["cluster"], "address": ""}
        return data

    # ---- watching -----------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> None:
        """Collect the engines' answers (waiting up to ``timeout_s``) and ask again."""
        now = time.monotonic()
        self.watch(now)
        for e in self.engines.values():
            if e.state in ("starting", "running") and e.ref is None and e.asked_at <= now:
                e.ref = e.actor.poll.remote()
        pending = {e.ref: e for e in self.engines.values() if e.ref is not None}
        if not pending:
            time.sleep(timeout_s)
            return
        ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in ready:
            engine = pending[ref]
            engine.ref = None
            if engine.state not in ("starting", "running"):
                continue                     # lost meanwhile: what it says no longer counts
            try:
                answer = self.ray.get(ref)
            except self.ray.exceptions.ActorUnavailableError:
                # unreachable for now (a node going down, or a network blip): ask again shortly;
                # Ray says ActorDiedError once it knows the actor is gone, and SILENT_S bounds the wait
                engine.asked_at = time.monotonic() + POLL_S
                continue
            except self.ray.exceptions.RayError as exc:      # the actor or its node died
                self.lose(engine, _first_line(exc))
                continue
            engine.answered = time.monotonic()
            if engine.state == "starting":
                engine.state = "running"
            else:
                self.on_answer(engine, answer)

    def watch(self, now: float) -> None:
        """Lose the engines that never started, went silent, or (file streams only: a camera may
        be quiet) read no frame for ``STALL_S``."""
        for e in list(self.engines.values()):
            silent, idle = now - e.answered, now - e.progressed
            if e.state not in ("starting", "running"):
                continue
            if silent > (START_S if e.state == "starting" else SILENT_S):
                self.lose(e, f"no answer for {silent:.0f} s")
            elif idle > STALL_S and not any(self.streams[n].live for n in e.streams):
                self.lose(e, f"no frame read for {idle:.0f} s")

    def on_answer(self, engine: Engine, answer: dict) -> None:
        """An engine's status and records: the records written, the next call scheduled (at once
        while it has more), its end handled."""
        got = self.results.add(answer.get("records") or b"", self.takes_from(engine))
        for name in got:
            if self.streams[name].moved_at:
                self.note_resumed(self.streams[name])
        engine.asked_at = 0.0 if answer.get("more") else time.monotonic() + POLL_S
        engine.status = answer.get("status") or engine.status
        rows = (engine.status or {}).get("streams", {})
        frames = sum(int(rows.get(name, {}).get("in", 0)) for name in engine.streams)
        if frames > engine.frames or got:         # reading, or still handing over its records
            engine.frames, engine.progressed = max(frames, engine.frames), time.monotonic()
        for name in engine.streams:
            st = self.streams[name]
            if rows.get(name, {}).get("state") in ("ended", "failed") and st.engine == engine.eid \
                    and st.state == "running":
                st.final_state = rows[name]["state"]
        code = answer.get("returncode")
        if code is None:
            return
        engine.returncode, engine.report, engine.tail = code, answer.get("report"), answer.get("tail", "")
        if code in (EXIT_OK, EXIT_FAILED):
            engine.state = "finished"      # (exit 1 with a "failure": a stage kept dying, its streams failed)
            self.close_segments(engine, lost=False, failed=bool((engine.report or {}).get("failure")))
        elif code == 2:                    # a mistake that another node would repeat
            engine.state = "failed"
            self.close_segments(engine, lost=False, failed=True)
            why = engine.tail.splitlines()[-1] if engine.tail else "exit code 2"
            self.events.append({"t": self.now(), "kind": "engine_failed", "engine": engine.eid,
                                "node": engine.node, "why": why})
            log.error("engine %s on %s stopped: %s", engine.eid, engine.node, why)
        else:
            self.lose(engine, f"engine exited with code {code}")
            return
        self.release(engine)

    def takes_from(self, engine: Engine) -> Callable[[str], bool]:
        """Whether a record of a stream from ``engine`` counts: only while the stream is its."""
        return lambda name: self.streams[name].engine == engine.eid

    def release(self, engine: Engine) -> None:
        """A finished engine's folder on its node goes, then its actor (and the capacity it holds)."""
        try:
            self.ray.get(engine.actor.close.remote(), timeout=CLOSE_S)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the actor goes anyway
            log.warning("engine %s: its folder on %s may be left: %s", engine.eid, engine.node, _first_line(exc))
        self.ray.kill(engine.actor)

    def lose(self, engine: Engine, why: str) -> None:
        """An engine died with its actor or node, or its process was killed, or it went silent:
        its unfinished streams wait to resume after the last record the driver holds."""
        if engine.state in ("lost", "finished", "failed", "stopped"):
            return
        engine.state, engine.ref = "lost", None      # an answer still on its way no longer counts
        self.quarantine[engine.node_id] = time.monotonic() + QUARANTINE_S
        self.reads.pop(engine.node_id, None)     # asked again when it is back
        try:
            self.ray.kill(engine.actor)          # whatever is left of it
        except Exception:  # noqa: BLE001 - already gone with its node
            pass
        moved = self.close_segments(engine, lost=True)
        self.events.append({"t": self.now(), "kind": "engine_lost", "engine": engine.eid, "node": engine.node,
                            "why": why, "streams": {n: self.streams[n].start for n in moved},
                            "resumed_after_s": None})
        log.warning("engine %s on %s lost (%s); %d stream(s) move: %s", engine.eid, engine.node, why, len(moved),
                    ", ".join(moved) or "none")

    def close_segments(self, engine: Engine, lost: bool, failed: bool = False, stopped: bool = False) -> list[str]:
        """Fold the engine's figures into its streams' past (its records: those the driver
        holds); a lost engine's unfinished streams wait again, from the frame after the last
        record held (a ``stopped`` one's stay stopped). Returns the streams that wait."""
        rows = ((engine.report if not lost else None) or engine.status or {}).get("streams", {})
        moved = []
        for name in engine.streams:
            st = self.streams[name]
            if st.engine != engine.eid:
                continue
            row = rows.get(name, {})
            seg_start = st.segments[-1][1]
            held = self.results.totals[name]
            out, errors = held.ok - st.past.get("out", 0), held.errors - st.past.get("errors", 0)
            st.start = max(st.start, held.last + 1)
            complete = bool(st.final_state) and self.holds_all(st, row, seg_start, out + errors)
            for key, value in (("out", out), ("errors", errors), ("drops", int(row.get("drops", 0))),
                               ("reconnects", int(row.get("reconnects", 0))),
                               ("duplicates", int(row.get("duplicates", 0)))):
                st.past[key] = st.past.get(key, 0) + value
            st.past["in"] = st.past.get("in", 0) + out + errors + int(row.get("drops", 0))
            if row.get("expected"):
                st.past["expected"] = max(st.past.get("expected", 0), seg_start + int(row["expected"]))
            st.engine = ""
            if failed and (st.final_state or row.get("state")) != "ended":
                st.state = "failed"
            elif stopped:
                st.state = "stopped"
            elif not lost or complete:
                # ran to its end (or its engine said so before dying, and every record reached us)
                st.state = "failed" if (st.final_state or row.get("state")) == "failed" else "done"
            else:
                st.moves += 1
                if st.moves > self.cfg.cluster.max_moves:
                    self.fail(st, f"its engine was lost {st.moves} times ([cluster] max_moves = "
                                  f"{self.cfg.cluster.max_moves})")
                else:
                    st.state, st.moved_at, st.final_state = "waiting", time.monotonic(), ""
                    st.waiting_since = st.moved_at
                    moved.append(name)
        return moved

    def holds_all(self, st: Stream, row: dict, seg_start: int, held_here: int) -> bool:
        """Whether the driver holds every record a lost engine wrote for ``st`` in the segment
        that started at ``seg_start`` (``held_here`` of them reached us): its last word said the
        stream ended, but records still on their way may have died with it (then the stream
        resumes after the last one held)."""
        if st.final_state == "failed":
            return True
        written = int(row.get("out", 0)) + int(row.get("errors", 0))
        if held_here < written:
            return False
        expected = int(row.get("expected") or 0)
        return not expected or self.results.totals[st.name].last + 1 >= seg_start + expected

    def note_resumed(self, st: Stream) -> None:
        """A moved stream's first record from its new engine reached the driver: the recovery time."""
        took = round(time.monotonic() - st.moved_at, 3)
        st.moved_at = 0.0
        for event in reversed(self.events):
            if event["kind"] == "engine_lost" and st.name in event["streams"]:
                event.setdefault("resumed_s", {})[st.name] = took
                event["resumed_after_s"] = max(event["resumed_after_s"] or 0.0, took)
                break

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    # ---- the run ------------------------------------------------------------------------------
    def view(self, state: str = "running") -> ClusterView:
        rows = []
        for name in self.order:
            st = self.streams[name]
            engine = self.engines.get(st.engine)
            current = ((engine.status or {}).get("streams", {}).get(name)) if engine else None
            shown = {"waiting": "moving" if st.moves else "waiting", "done": "ended"}.get(st.state, st.state)
            rows.append(stream_row(name, st.source["uri"], "live" if st.live else "file", shown, st.past,
                                   st.segments[-1][1] if st.segments else 0, current))
        elapsed = time.monotonic() - self.t0
        snapshot = Snapshot(state=state, elapsed_s=elapsed, timestamp=time.time(), totals=totals_of(rows, elapsed),
                            streams=tuple(rows))
        engines = tuple(engine_row(e.eid, e.node, e.state, len(e.streams), e.status) for e in self.engines.values())
        events = tuple(f"{e['t']:.1f}s engine {e['engine']} on {e['node']} {e['kind'].split('_')[1]}: {e['why']}"
                       for e in self.events)
        return ClusterView(snapshot, engines, nodes=len(self.nodes),
                           waiting=sum(st.state == "waiting" for st in self.streams.values()), events=events)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupted = signum

    def run(self, dashboard: ClusterDashboard) -> str:
        """Until every stream is done or failed, or Ctrl-C; returns the final state."""
        nodes = self.refresh_nodes()
        room = sum(n.capacity for n in nodes)
        if room == 0:
            cl = self.cfg.cluster
            raise ConfigError(f"no alive node of the Ray cluster at {self.address} offers '{cl.resource}' "
                              f"(start nodes with ray start --resources='{{\"{cl.resource}\": N}}', N = streams "
                              f"the node sustains, or set [cluster] resource = \"CPU\")")
        if room < len(self.order):
            log.warning("the cluster has room for %d of %d streams; the others wait for room", room, len(self.order))
        self._next_nodes = 0.0
        dashboard.start()
        while not self.interrupted:
            self.place()
            self.poll(POLL_S)
            dashboard.update(self.view())
            if all(st.state in ("done", "failed") for st in self.streams.values()):
                break
        if self.interrupted:
            self.stop_all()
            for st in self.streams.values():
                st.state = "stopped" if st.state in ("waiting", "running") else st.state
        dashboard.update(self.view("interrupted" if self.interrupted else "finished"))
        dashboard.stop()
        return "interrupted" if self.interrupted else "finished"

    def stop_all(self) -> None:
        """Ctrl-C: every engine stops as on Ctrl-C (its stages, pools, run directory go), the
        driver takes the records it still has, then its folder and actor go."""
        running = [e for e in self.engines.values() if e.state in ("starting", "running")]
        refs = {e.actor.stop.remote(): e for e in running}
        if refs:
            ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=STOP_S)
            for ref in ready:
                try:
                    refs[ref].returncode = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    pass
        deadline = time.monotonic() + DRAIN_S
        for e in running:
            while time.monotonic() < deadline:
                try:
                    answer = self.ray.get(e.actor.poll.remote(), timeout=max(0.1, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - gone already: what the driver holds stands
                    break
                self.results.add(answer.get("records") or b"", self.takes_from(e))
                e.status = answer.get("status") or e.status
                if answer.get("returncode") is not None:
                    e.report = answer.get("report")
                    break
            e.state = "stopped"
            self.close_segments(e, lost=True, stopped=True)
            self.release(e)

    # ---- the end ------------------------------------------------------------------------------
    def finish(self, state: str) -> dict:
        """The cluster's report: the streams' figures, exact from the records the driver holds."""
        self.results.close()
        elapsed = time.monotonic() - self.t0
        rows = {}
        for row in self.view(state).snapshot.streams:
            st, t = self.streams[row.name], self.results.totals[row.name]
            d = row.to_dict()
            d.update({"out": t.ok, "errors": t.errors, "in_flight": 0, "in": t.ok + t.errors + row.drops})
            d["avg_fps"] = d["fps"] = round((t.ok + t.errors) / elapsed, 2) if elapsed > 0 else 0.0
            if t.latency.count:
                e2e = stage_row("end_to_end", row.name, t.latency)
                d["latency_ms"] = {"end_to_end": {"p50": e2e.p50_ms, **e2e.latency()}}
            d["state"] = {"done": "ended", "failed": "failed"}.get(st.state, "interrupted")
            if st.why:
                d["error"] = st.why
            d["moves"] = st.moves
            d["segments"] = [{"engine": e, "start": s} for e, s in st.segments]
            rows[row.name] = d
        snap_rows = [StreamRow.from_dict(n, d) for n, d in rows.items()]
        overall = totals_of(snap_rows, elapsed)
        report = Snapshot(state=state, elapsed_s=elapsed, timestamp=time.time(), totals=overall).to_dict()
        report["streams"] = rows
        report["cluster"] = {
            "address": self.address,
            "started": self.t0_unix,          # unix time; events' "t" are seconds from here
            "nodes": {n.label: {"node_id": n.node_id, "capacity": n.capacity} for n in self.nodes.values()},
            "engines": [{"engine": e.eid, "node": e.node, "streams": e.streams, "state": e.state,
                         "exit_code": e.returncode, "folder": self.kept_folder(e),
                         "throughput_fps": (e.report or e.status or {}).get("throughput_fps", 0.0)}
                        for e in self.engines.values()],
            "events": self.events,
        }
        return report


    def kept_folder(self, engine: Engine) -> str | None:
        """Where the engine's folder stays on its node (``[cluster] engine_dir``), else None."""
        base = self.cfg.cluster.engine_dir
        return str(Path(base) / self.name / engine.eid) if base else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def connect(ray: Any, address: str) -> None:
    """Join the cluster as a driver; a cluster that is not there is one line (exit 2). A
    HOST:PORT where nothing answers is found out first: Ray itself would retry for minutes."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
        except OSError as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address}: nothing answers at {host}:{port} "
                              f"({exc.strerror or exc})") from None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds (ConnectionError, RuntimeError, gRPC)
        raise ConfigError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}") from None


def run_cluster(cfg: RunConfig, address: str, duration_s: float = 0.0) -> int:
    """``ovstream run --cluster``: the whole run on the driver's side; returns the exit code."""
    from engine.control.preflight import preflight
    ray = import_ray()
    if cfg.output.annotated and not cfg.cluster.engine_dir:
        raise ConfigError("[output] images / video in cluster mode: the annotated frames are written on each "
                          "engine's node; set [cluster] engine_dir to a folder (the same path on every node) "
                          "where the engines keep them")
    if cfg.tracking.enabled:
        raise ConfigError("[tracking] is not supported in cluster mode yet: a stream moved to another node would "
                          "start its track ids again and its events.jsonl stays on the node it left; run it "
                          "without --cluster")
    preflight(cfg, local_sources_only=True)    # a mistake in the config, model or sources: one line, here
    console = Console()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with OutputDir(cfg.output.dir, reserve_report=cfg.output.report) as output:
        connect(ray, address)
        run: ClusterRun | None = None
        try:
            run = ClusterRun(ray, cfg, address, output.path.resolve(), duration_s)
            for sig in (signal.SIGINT, signal.SIGTERM):        # after ray.init, which sets its own
                signal.signal(sig, run._on_signal)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            live = Console(stderr=True)
            dashboard = ClusterDashboard(cfg.dashboard.refresh_hz,
                                         console=live if cfg.dashboard.enabled and live.is_terminal else console,
                                         plain=not (cfg.dashboard.enabled and live.is_terminal))
            state = run.run(dashboard)
            report = run.finish(state)
        finally:
            for engine in run.engines.values() if run is not None else ():
                try:
                    ray.kill(engine.actor)
                except Exception:  # noqa: BLE001
                    pass
            ray.shutdown()
        console.print(render_cluster_summary(report, run.view(state)))
        if cfg.output.report:
            path = output.write_report(report)
            console.print(f"report: {path}   results: {output.path / 'results.jsonl'}")
    if state == "interrupted":
        print(f"ovstream run: interrupted by signal {run.interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [n for n, d in report["streams"].items() if d["state"] == "failed"]
    errors = report["accounting"]["errors"]
    problems = ([f"{errors} frames failed"] if errors else []) + \
        ([f"stream(s) {', '.join(failed)} failed"] if failed else []) + \
        [f"stream {n}: {d['error']}" for n, d in report["streams"].items() if d.get("error")]
    if problems:
        print(f"ovstream run: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
