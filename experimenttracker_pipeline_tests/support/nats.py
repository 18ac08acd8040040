"""A private NATS JetStream server for tests (its own port and storage folder, so a test can stop and restart it),
and helpers to publish to and read from its streams. `nats-server` must be installed (`/usr/sbin/nats-server`,
Debian package `nats-server`); the tests that need it fail, never skip, without it."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, up: bool, timeout: float = 300.0, process: subprocess.Popen | None = None) -> None:
    """Wait until `port` accepts connections (`up`) or refuses them. With `process` (the one that should listen),
    fail at once when it exits, so the generous `timeout` only bounds a process that lives but never listens: a
    loaded machine delays a start by tens of seconds, and that must not fail a test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process for port {port} exited with {process.returncode} before listening")
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not become {'reachable' if up else 'free'} within {timeout:.0f} s")


class NatsServer:
    """`nats-server -js` on a private port with file storage in ``folder``; stop() and start() keep the data."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.folder / "store")],
            stdout=(self.folder / "server.log").open("ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port, up=True, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        wait_for_port(self.port, up=False)


def publish(url: str, messages: list, *, subject: str = "polytraders.reports.fills", stream: str = "REPORTS",
            subjects: tuple[str, ...] = ("polytraders.reports.>",)) -> list[int]:
    """Publish report dicts (or raw bytes/str) to JetStream, creating the stream if needed; the stream sequences."""
    import nats
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    async def main() -> list[int]:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=2)
        js = nc.jetstream(timeout=5)
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=stream, subjects=list(subjects)))
        seqs = []
        for message in messages:
            body = message if isinstance(message, bytes) else (message if isinstance(message, str) else json.dumps(message)).encode()
            seqs.append((await js.publish(subject, body)).seq)
        await nc.close()
        return seqs

    return asyncio.run(main())


def read_subject(url: str, subject: str, *, stream: str = "REPORTS") -> list[dict]:
    """Every message on ``subject`` in the stream, oldest first, with its Nats-Msg-Id header (an ephemeral
    consumer: reading does not disturb the bot's durable consumer)."""
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    async def main() -> list[dict]:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=2)
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        total = info.state.messages
        subscription = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        out: list[dict] = []
        while len(out) < total:
            try:
                batch = await subscription.fetch(batch=500, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # nats-py raises its own TimeoutError, or asyncio's when the timer fires inside its pull request:
                # both mean no more messages on this subject (total counts the whole stream's).
                break
            for message in batch:
                out.append({"seq": message.metadata.sequence.stream, "subject": message.subject,
                            "msg_id": (message.headers or {}).get("Nats-Msg-Id"), "payload": json.loads(message.data)})
                await message.ack()
        await nc.close()
        return out

    return asyncio.run(main())
