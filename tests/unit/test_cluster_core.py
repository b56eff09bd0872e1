"""Cluster mode's pure parts: placement by capacity, records read in batches and kept once, the config."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from engine.cluster.host import read_lines, readable
from engine.cluster.placement import Node, assign, capacity
from engine.cluster.segments import Results
from engine.config import RunConfig
from engine.core.errors import ConfigError
from tests.conftest import REPO


def test_capacity_counts_whole_streams_of_the_resource():
    assert capacity({"ovstream_streams": 6.0}, "ovstream_streams", 1.0) == 6
    assert capacity({"CPU": 2.0}, "CPU", 0.5) == 4
    assert capacity({"CPU": 1.2}, "CPU", 0.4) == 3          # 1.2 / 0.4 is 2.9999… in floats
    assert capacity({"CPU": 8.0}, "GPU", 0.25) == 0


def test_streams_fill_nodes_in_proportion_and_never_beyond_capacity():
    nodes = [Node("a", "a", 6), Node("b", "b", 2)]
    placed = assign([f"s{i}" for i in range(10)], nodes)
    counts = {n: list(placed.values()).count(n) for n in ("a", "b")}
    assert counts == {"a": 6, "b": 2}                       # 8 fit, 2 wait
    assert len(placed) == 8 and "s9" not in placed
    placed = assign(["s0", "s1", "s2", "s3"], [Node("a", "a", 4), Node("b", "b", 4)])
    assert sorted(placed.values()) == ["a", "a", "b", "b"]
    assert assign(["s0", "s1"], [Node("a", "a", 4, used=3), Node("b", "b", 4, used=4)]) == {"s0": "a"}


def _record(stream: str, fid: int, status: str = "ok") -> bytes:
    return (json.dumps({"stream": stream, "frame_id": fid, "status": status,
                        "latency_ms": {"end_to_end": 1.0 + fid}}) + "\n").encode()


def test_whole_lines_in_bounded_batches(tmp_path):
    path = tmp_path / "results.jsonl"
    assert read_lines(path, 0) == (b"", False)                  # not written yet
    lines = [_record("a", i) for i in range(10)]
    path.write_bytes(b"".join(lines) + _record("a", 10)[:20])  # the engine is writing line 10
    got, offset, more = b"", 0, True
    while more:
        batch, more = read_lines(path, offset, limit=3 * len(lines[0]))
        assert batch.endswith(b"\n") and len(batch) <= 3 * len(lines[0])
        got, offset = got + batch, offset + len(batch)
    assert got == b"".join(lines)                              # never the torn line
    long = b'{"stream": "b", "frame_id": 0, "pad": "' + b"x" * 100 + b'"}\n'
    path.write_bytes(long + lines[0])
    assert read_lines(path, 0, limit=16) == (long, True)      # a line longer than the limit comes whole


def test_each_frame_once_from_the_stream_s_current_engine(tmp_path):
    results = Results(["a", "b"], tmp_path / "results.jsonl")
    assert results.add(b"".join(_record("a", i) for i in range(4)) + _record("b", 0, "error"),
                       lambda name: True) == {"a", "b"}
    # a batch sent again, and records of a stream its sender no longer runs: not taken
    assert results.add(b"".join(_record("a", i) for i in range(2, 6)), lambda name: name == "a") == {"a"}
    assert results.add(_record("b", 1), lambda name: name == "a") == set()
    results.close()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["stream"], r["frame_id"]) for r in lines] == [("a", i) for i in range(4)] + [("b", 0)] + \
        [("a", 4), ("a", 5)]
    assert (results.totals["a"].ok, results.totals["a"].last, results.totals["a"].latency.count) == (6, 5, 6)
    assert (results.totals["b"].errors, results.totals["b"].last) == (1, 0)
    counted = Results(["a"], None)                             # [output] jsonl off: counted, not written
    assert counted.add(_record("a", 0), lambda name: True) == {"a"} and counted.totals["a"].ok == 1


def test_a_node_says_which_files_it_reads(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert readable([str(tmp_path / "x.jpg"), str(tmp_path / "missing.mp4"), str(tmp_path)]) == \
        [str(tmp_path / "x.jpg"), str(tmp_path)]


def test_cluster_section_is_validated_like_every_other():
    cfg = RunConfig.from_dict({"cluster": {"address": "ray://10.0.0.5:10001", "per_stream": 0.5}})
    assert cfg.cluster.address == "ray://10.0.0.5:10001"
    for bad, words in (({"address": "not an address"}, "[cluster] address"), ({"per_stream": 0}, "per_stream"),
                       ({"adress": "auto"}, "did you mean 'address'"),
                       ({"engine_dir": "runs/engines"}, "[cluster] engine_dir must be an absolute path")):
        with pytest.raises(ConfigError, match=None) as info:
            RunConfig.from_dict({"cluster": bad})
        assert words in str(info.value)
    with pytest.raises(ConfigError, match="start"):
        RunConfig.from_dict({"source": {"start": -1}})


def test_missing_ray_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = {"PYTHONPATH": f"{fake.parent}:{REPO}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--model", "face", "--cluster", "auto",
                           "--output", str(tmp_path / "out"), "--no-dashboard"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == \
        ["ovstream run: error: cluster mode needs Ray: pip install 'ovstream[cluster]' (or 'ray>=2.30')"]


def test_annotated_output_without_engine_dir_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("ray")
    config = tmp_path / "run.toml"
    config.write_text('[model]\nname = "face"\n[output]\nimages = true\n[cluster]\naddress = "127.0.0.1:1"\n')
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(config), "--output", str(tmp_path / "out"),
                           "--no-dashboard"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == \
        ["ovstream run: error: [output] images / video in cluster mode: the annotated frames are written on each "
         "engine's node; set [cluster] engine_dir to a folder (the same path on every node) where the engines "
         "keep them"]


def test_an_address_where_nothing_answers_is_one_line_not_a_wait(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--model", "face", "--cluster",
                           f"127.0.0.1:{port}", "--output", str(tmp_path / "out"), "--no-dashboard"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ovstream run: error: cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} "
        "(Connection refused)"]


class _FakeRay:
    """Just what the driver's placement touches: the node list, a node's answer on the files it
    reads (every node reads every file), and actors that record their start."""

    class exceptions:           # noqa: N801 - Ray's module shape
        RayError = RuntimeError

    def __init__(self, nodes: list[dict]) -> None:
        self.node_list = nodes
        self.started: list[tuple[str, list[str]]] = []

    def nodes(self) -> list[dict]:
        return self.node_list

    def wait(self, refs, num_returns, timeout):
        return list(refs), []

    def get(self, ref):
        return ref.value

    class Ref:
        """An object ref: each call's own, however equal the values."""

        def __init__(self, value) -> None:
            self.value = value

    def remote(self, target):
        fake = self

        class Handle:
            def options(self, **options):
                node = options["scheduling_strategy"].node_id

                class Actor:
                    class start:        # noqa: N801 - Ray's method.remote(...) shape
                        @staticmethod
                        def remote(config, duration, env):
                            fake.started.append((node, [s["name"] for s in config["sources"]]))
                            return object()

                class Factory:
                    @staticmethod
                    def remote(*args):
                        return Actor() if isinstance(target, type) else fake.Ref(target(*args))
                return Factory()
        return Handle()


def _node(node_id: str, streams: float) -> dict:
    return {"NodeID": node_id, "Alive": True, "NodeManagerHostname": "h", "Resources": {"ovstream_streams": streams}}


def _placed(tmp_path, streams: int, nodes: list[dict], **cluster):
    """A driver for ``streams`` folder streams on a fake cluster of ``nodes``, its first placement done."""
    from engine.cluster.driver import ClusterRun
    cfg = RunConfig.from_dict({"sources": [{"uri": str(tmp_path), "name": f"s{i}"} for i in range(streams)],
                               "cluster": {"address": "auto", **cluster}})
    fake = _FakeRay(nodes)
    (tmp_path / "out").mkdir()
    run = ClusterRun(fake, cfg, "auto", tmp_path / "out")
    run.place()
    return run, fake


def test_streams_that_wait_for_room_go_to_a_node_that_joins(tmp_path):
    pytest.importorskip("ray")
    run, fake = _placed(tmp_path, 3, [_node("a" * 56, 2)])
    assert fake.started == [("a" * 56, ["s0", "s1"])]              # room for two: the third waits
    assert run.streams["s2"].state == "waiting"
    fake.node_list.append(_node("b" * 56, 4))                       # a node joins the cluster
    run._next_nodes = 0.0
    run.place()
    assert fake.started[-1] == ("b" * 56, ["s2"])
    assert [s.state for s in run.streams.values()] == ["running"] * 3


def test_a_stream_that_finds_no_room_fails_after_wait_s_in_one_line(tmp_path):
    pytest.importorskip("ray")
    run, fake = _placed(tmp_path, 2, [_node("a" * 56, 1)], wait_s=0.05)
    assert run.streams["s1"].state == "waiting"
    time.sleep(0.1)
    run._next_nodes = 0.0
    run.place()
    assert (run.streams["s0"].state, run.streams["s1"].state) == ("running", "failed")
    assert run.streams["s1"].why == "no node of the Ray cluster had room for it for 0.05 s ([cluster] wait_s)"


def test_an_engine_silent_or_reading_nothing_is_lost_and_its_streams_wait_again(tmp_path):
    pytest.importorskip("ray")
    from engine.cluster.driver import SILENT_S, STALL_S
    run, fake = _placed(tmp_path, 2, [_node("a" * 56, 1), _node("b" * 56, 1)])
    first, second = run.engines.values()
    now = time.monotonic()
    first.state = second.state = "running"
    first.answered, first.progressed = now, now - STALL_S - 1         # answers, but reads no frame
    second.answered, second.progressed = now - SILENT_S - 1, now      # answers no more
    run.watch(now)
    assert (first.state, second.state) == ("lost", "lost")
    assert [e["why"] for e in run.events] == [f"no frame read for {STALL_S + 1:.0f} s",
                                              f"no answer for {SILENT_S + 1:.0f} s"]
    assert [(s.state, s.moves) for s in run.streams.values()] == [("waiting", 1)] * 2


def test_an_engine_lost_after_saying_ended_moves_the_records_it_never_sent(tmp_path):
    pytest.importorskip("ray")
    run, fake = _placed(tmp_path, 2, [_node("a" * 56, 2)])
    (engine,) = run.engines.values()
    engine.state = "running"
    ended = {"state": "ended", "in": 10, "out": 10, "expected": 10}
    # its last answer: both streams ended; s0's ten records all came, s1's last four were still on their way
    run.on_answer(engine, {"records": b"".join([_record("s0", i) for i in range(10)] +
                                               [_record("s1", i) for i in range(6)]),
                           "status": {"streams": {"s0": ended, "s1": ended}}})
    run.lose(engine, "its node died")
    assert (run.streams["s0"].state, run.streams["s1"].state) == ("done", "waiting")
    assert run.streams["s1"].start == 6 and run.streams["s1"].final_state == ""
    assert run.events[-1]["streams"] == {"s1": 6}
