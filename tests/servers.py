"""Real servers for the tests, on 127.0.0.1: a Mosquitto broker, a subscriber, a free port."""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str:
    """The broker's path; outside CI a missing broker skips the test, in CI it fails it."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("mosquitto is not installed, but CI is set: .ci/run must apt-get install mosquitto")
    pytest.skip("mosquitto is not installed (apt-get install mosquitto); CI installs it")


def tls_files(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    if not shutil.which("openssl"):
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed, but CI is set: .ci/run must apt-get install openssl")
        pytest.skip("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    for args in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                  "-days", "2", "-subj", "/CN=ovstream test CA"],
                 ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                  "-subj", "/CN=127.0.0.1"],
                 ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                  "-out", "server.crt", "-days", "2", "-extfile", "san.ext"]):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    return files


class Mosquitto:
    """A broker on 127.0.0.1:``port`` that saves its sessions in ``directory`` when stopped, so a
    restart on the same port keeps persistent sessions and the QoS 1 messages queued for them.
    With ``tls`` (from :func:`tls_files`) it speaks TLS only; with ``users`` it needs a password."""

    def __init__(self, directory: Path, port: int | None = None, tls: dict[str, Path] | None = None,
                 users: dict[str, str] | None = None) -> None:
        self.binary = mosquitto_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = directory / "mosquitto.conf"
        # user: as root, mosquitto would switch to user "mosquitto", which cannot save in directory
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "persistence true",
                 f"persistence_location {directory}/", "max_queued_messages 0"]
        if tls:
            lines += [f"cafile {tls['ca.crt']}", f"certfile {tls['server.crt']}", f"keyfile {tls['server.key']}"]
        if users:
            passwords = directory / "passwords"
            passwords.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-U", str(passwords)],
                           check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        log = open(self.directory / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.directory / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Subscriber:
    """Collects every message on ``topic`` (QoS 1, persistent session: nothing queued for it while
    it was away is lost), resubscribing on every connect."""

    def __init__(self, port: int, topic: str = "ovstream/#", ca: Path | None = None,
                 username: str = "", password: str = "") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connects = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber not subscribed within 10 s")

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if not reason.is_failure:
            self.connects += 1
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count >= count

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
