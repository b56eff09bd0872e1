"""MQTT results sink: every result (its results.jsonl line) published with paho-mqtt, and with
``[tracking]`` every event (its events.jsonl line) on ``events_topic``.

The stream never waits for the broker. :meth:`MqttSink.write` appends the record to a bounded
FIFO and returns; records move from the FIFO to paho only while the client is connected and
fewer than ``max_inflight`` are unconfirmed, so the FIFO is the one buffer a broker outage fills.
Beyond ``buffer`` records the oldest is dropped and counted (the newest results are worth more to
whoever watches). paho's network thread connects, reconnects with back-off and reports
confirmations; everything else happens on the postprocessor's thread (:meth:`poll` each turn),
so no lock is held across a paho call.

Delivery: QoS 1 is at least once. A record handed to paho stays in paho's session until the
broker's PUBACK; after a lost connection paho sends the unconfirmed ones again (flagged DUP), in
order, before anything newer. So a subscriber may see a record twice around a broker restart,
never out of order after dropping repeats, and never miss one unless the buffer overflowed
(``dropped``). QoS 0 is at most once: what was in the socket when the connection broke is lost
and counted as dropped. At the end of the run :meth:`close` waits up to ``flush_timeout_s`` for
every record to be confirmed; what is left then is counted as dropped.

Across a postprocessor restart the buffer dies with the process, so the sink reports
:meth:`~MqttSink.replay_from` (the lowest frame id the broker has not confirmed) in every
heartbeat; the supervisor hands it to the next postprocessor, which publishes results.jsonl again
from there (``workers.postprocessor.replay``): repeats, never a gap.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import chain

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from engine.config import MqttConfig
from engine.core.errors import ConfigError
from engine.core.results import Event, FrameResult
from engine.io.sinks import Sink
from engine.observe.metrics import DEFAULT_STREAM, stream_key

log = logging.getLogger(__name__)
RECONNECT_DELAY_S = (1, 5)          # paho's back-off between reconnect attempts (min, max)
Mark = tuple[str, int]              # (stream, frame id) of a record


class MqttSink(Sink):
    """Publishes each result's line on ``cfg.topic`` formatted with the result's stream name."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, streams: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.replays = cfg.qos == 1     # after a postprocessor restart, unconfirmed records go again
        self._streams = tuple(streams) or (DEFAULT_STREAM,)   # index = the stream's id in stats keys
        self._topics: dict[str, str] = {}
        self._queue: deque[tuple[Mark, str, bytes]] = deque()   # ((stream, frame id), topic, payload)
        self._inflight: deque[Mark] = deque()   # given to paho, not yet confirmed
        self._confirmed = 0             # confirmations from paho's thread (in sending order)
        self._taken = 0                 # of those, already taken off _inflight
        self._dropped = 0
        self._next_id: dict[str, int] = {}    # per stream: the frame id after the last written
        self._disconnects = 0           # connections lost so far (paho's thread counts them)
        self._disconnects_seen = 0
        self._closing = False
        self._unreachable_logged = False
        self._connected = threading.Event()
        self._client = self._make_client(cfg)
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self._client.loop_start()

    def _make_client(self, cfg: MqttConfig) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             clean_session=cfg.clean_session, protocol=mqtt.MQTTv311)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca or None, certfile=cfg.cert or None,
                               keyfile=cfg.key or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[output.mqtt] TLS files: {exc}") from None
            client.tls_insecure_set(cfg.insecure)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # ---- paho's network thread: flags and counts only ---------------------------------------
    def _on_connect(self, _client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            log.warning("mqtt: %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        log.info("mqtt: connected to %s:%s", self.cfg.host, self.cfg.port)
        self._unreachable_logged = False
        self._connected.set()

    def _on_connect_fail(self, _client, _userdata) -> None:
        if not self._unreachable_logged:           # once per outage, not at every retry
            self._unreachable_logged = True
            log.warning("mqtt: cannot reach %s:%s; buffering up to %d records and retrying",
                        self.cfg.host, self.cfg.port, self.cfg.buffer)

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        if self._connected.is_set() and not self._closing:
            log.warning("mqtt: lost %s:%s (%s); buffering", self.cfg.host, self.cfg.port, reason)
        self._connected.clear()
        self._disconnects += 1

    def _on_publish(self, _client, _userdata, _mid, _reason, _properties) -> None:
        self._confirmed += 1

    # ---- the postprocessor's thread ----------------------------------------------------------
    def topic(self, stream: str, pattern: str = "") -> str:
        """``pattern`` (default: the results topic) for ``stream``."""
        pattern = pattern or self.cfg.topic
        topic = self._topics.get(pattern + "\0" + stream)
        if topic is None:
            topic = self._topics[pattern + "\0" + stream] = pattern.format(stream=stream)
        return topic

    def write(self, result: FrameResult, frame: np.ndarray | None = None, line: str | None = None) -> None:
        payload = (line if line is not None else result.to_json()).encode("utf-8")
        stream = result.stream or self._streams[0]
        self._publish(stream, result.frame_id, self.topic(stream), payload)

    def write_event(self, event: Event) -> None:
        """An event on ``events_topic``, after its frame's record (same frame id: same replay mark)."""
        stream = event.stream or self._streams[0]
        self._publish(stream, event.frame_id, self.topic(stream, self.cfg.events_topic), event.to_json().encode())

    def _publish(self, stream: str, frame_id: int, topic: str, payload: bytes) -> None:
        self._queue.append(((stream, frame_id), topic, payload))
        self._next_id[stream] = frame_id + 1
        while len(self._queue) > self.cfg.buffer:
            self._queue.popleft()
            self._dropped += 1
        self.poll()

    def _sync(self) -> None:
        """Take confirmed records off the in-flight list; after a lost connection, count the
        QoS 0 records that died with the socket as dropped."""
        confirmed = self._confirmed
        for _ in range(min(confirmed - self._taken, len(self._inflight))):
            self._inflight.popleft()
        self._taken = confirmed
        if self._disconnects != self._disconnects_seen:
            self._disconnects_seen = self._disconnects
            if self.cfg.qos == 0:
                self._dropped += len(self._inflight)
                self._inflight.clear()

    def poll(self) -> None:
        """Hand queued records to paho while connected and under the in-flight bound."""
        self._sync()
        while self._queue and self._connected.is_set() and len(self._inflight) < self.cfg.max_inflight:
            mark, topic, payload = self._queue[0]
            info = self._client.publish(topic, payload, qos=self.cfg.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and self.cfg.qos == 0:
                break                               # not sent, not kept by paho: try again later
            self._queue.popleft()                   # QoS 1: paho keeps it until the PUBACK
            self._inflight.append(mark)

    @property
    def buffered(self) -> int:
        self._sync()
        return len(self._queue) + len(self._inflight)

    def replay_from(self) -> dict[str, int]:
        """Per stream, the lowest frame id not yet confirmed: every record of the stream below it
        was confirmed or counted as dropped. After a restart, records from there on are published
        again (QoS 1). Records leave in order, so the first one pending of a stream is its lowest."""
        self._sync()
        pending: dict[str, int] = {}
        for stream, frame_id in chain(self._inflight, (mark for mark, _, _ in self._queue)):
            pending.setdefault(stream, frame_id)
        return {**self._next_id, **pending}

    def counters(self) -> dict[str, int]:
        return {"mqtt_published": self._confirmed, "mqtt_dropped": self._dropped}

    def gauges(self) -> dict[str, int | float]:
        """Buffer and connection; with QoS 1 also each stream's replay mark
        (``mqtt_replay_from@<stream id>``, see :meth:`replay_from`)."""
        gauges: dict[str, int | float] = {"mqtt_buffered": self.buffered,
                                          "mqtt_connected": int(self._connected.is_set())}
        if self.replays:
            marks = self.replay_from()
            gauges.update({stream_key("mqtt_replay_from", sid): marks[name]
                           for sid, name in enumerate(self._streams) if name in marks})
        return gauges

    def close(self) -> None:
        """Wait up to ``flush_timeout_s`` for every record to be confirmed, then disconnect."""
        deadline = time.monotonic() + self.cfg.flush_timeout_s
        while self.buffered and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        left = self.buffered
        if left:
            log.warning("mqtt: %d records not confirmed by %s:%s after %.1f s; dropped",
                        left, self.cfg.host, self.cfg.port, self.cfg.flush_timeout_s)
            self._dropped += left
            self._queue.clear()
            self._inflight.clear()


__all__ = ["MqttSink"]
