"""Partial alert windows over NATS JetStream: collectors publish them, the alerting node reads.

One stream (``SLUICE_PARTIALS``, subjects ``sluice.partials.<collector>``) kept on the NATS
server's disk for ``retention_s``: a collector's partials wait there while the alerting node
is away, and the node reads on from the stream sequence its saved state reached. Delivery is
at least once: a collector whose publication is not acknowledged publishes it again with the
same ``Nats-Msg-Id`` (``collector:epoch:seq``, which JetStream de-duplicates within two
minutes), and the node merges each (collector, epoch, seq) once (``Positions``).

nats-py is asyncio; each side runs its own event loop on a thread of its own, so the ingest
and the engine stay plain threads.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats
import structlog
from nats.js import api
from nats.js.errors import NotFoundError

from ..counters import Counters
from .partial import STREAM, Partial, PartialError, decode, encode

log = structlog.get_logger(__name__)

SUBJECTS = "sluice.partials"
#: JetStream drops a second publication with the same Nats-Msg-Id within this long
DUPLICATE_WINDOW_S = 120.0
#: a partial at most (the builder keeps them well under it; NATS's default limit is 1 MiB)
MAX_MESSAGE_BYTES = 1 << 20
_RETRY_S = 1.0
#: partials a collector keeps while the NATS server is away, at most
MAX_QUEUED_BYTES = 256 << 20
#: with nothing to read for this long, the alerting node moves its windows by its clock
IDLE_S = 0.2
#: how far before its start a node with no stream position reads (message times are the NATS
#: server's clock: this much apart from the node's is tolerated)
START_MARGIN_S = 10.0


class _LoopThread:
    """An asyncio event loop on a daemon thread, running one main coroutine until stopped."""

    def __init__(self, name: str, main: Callable[[], Coroutine[Any, Any, None]]):
        self.loop = asyncio.new_event_loop()
        self._main = main
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._task: asyncio.Task[None] | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._task = self.loop.create_task(self._main())
        try:
            self.loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)


class _Link:
    """What one side's connection to the NATS server says of itself, logged once per change
    (the server lost, then back) rather than once per retry with a traceback, as the client
    library's default does every second while the server is away."""

    def __init__(self, url: str, side: str, counters: Counters, counter: str):
        self.url = url
        self.side = side
        self.counters = counters
        self.counter = counter
        self.down = False

    def failed(self, exc: BaseException) -> None:
        self.counters.inc(self.counter)
        if not self.down:
            self.down = True
            log.warning(
                "cannot reach the NATS server; retrying every second",
                url=self.url,
                side=self.side,
                error=str(exc) or type(exc).__name__,
                fix="start nats-server with -js, or set [cluster] nats_url",
            )

    def up(self) -> None:
        if self.down:
            self.down = False
            log.info("the NATS server is reachable again", url=self.url, side=self.side)

    async def _error(self, exc: Exception) -> None:
        self.failed(exc)

    async def _disconnected(self) -> None:
        if not self.down:
            self.down = True
            log.warning("lost the NATS server; reconnecting", url=self.url, side=self.side)

    async def _reconnected(self) -> None:
        self.up()

    async def connect(self) -> Any:
        """A connection that reconnects by itself for ever (the node may restart at any time)."""
        nc = await nats.connect(
            self.url,
            name=f"sluice {self.side}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=_RETRY_S,
            allow_reconnect=True,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        self.up()
        return nc


async def ensure_stream(js: Any, retention_s: float, max_bytes: int) -> None:
    """Create the stream, or bring its limits to these."""
    config = api.StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECTS}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=retention_s,
        max_bytes=max_bytes,
        max_msg_size=MAX_MESSAGE_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=api.DiscardPolicy.OLD,
    )
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)


class PartialPublisher:
    """A collector's side: partials queued by the ingest are published in order, each until
    JetStream acknowledges it. The queue is bounded: beyond ``max_queued_bytes`` of partials
    (the server away for long) the oldest are dropped, counted."""

    def __init__(
        self,
        url: str,
        counters: Counters,
        retention_s: float = 3600.0,
        max_bytes: int = 1 << 30,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ):
        self.url = url
        self.counters = counters
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.max_queued_bytes = max_queued_bytes
        self._queue: deque[Partial] = deque()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._ready: asyncio.Event | None = None
        self._thread = _LoopThread("sluice-partials-out", self._main)
        self._link = _Link(url, "collector", counters, "alert_partials_publish_errors_total")
        self.published = 0

    def submit(self, partials: list[Partial]) -> None:
        """Queue partials for publication (from the ingest's thread)."""
        if not partials:
            return
        dropped = 0
        with self._lock:
            self._queue.extend(partials)
            self._queued_bytes += sum(p.nbytes() for p in partials)
            while self._queued_bytes > self.max_queued_bytes and len(self._queue) > 1:
                self._queued_bytes -= self._queue.popleft().nbytes()
                dropped += 1
            queued = len(self._queue)
        if dropped:
            self.counters.inc("alert_partials_dropped_total", dropped)
        self.counters.set("alert_partials_queued", queued)
        if self._ready is not None and not self._thread.loop.is_closed():
            self._thread.loop.call_soon_threadsafe(self._ready.set)

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Publish what is queued (for up to ``drain_s``), then stop."""
        deadline = time.monotonic() + drain_s
        while self.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._thread.stop()

    async def _main(self) -> None:
        self._ready = asyncio.Event()
        while True:
            try:
                nc = await self._link.connect()
                try:
                    js = nc.jetstream()
                    await ensure_stream(js, self.retention_s, self.max_bytes)
                    await self._publish_all(js)
                finally:
                    await nc.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server away or refusing: wait, then again
                self._link.failed(exc)
                await asyncio.sleep(_RETRY_S)

    async def _publish_all(self, js: Any) -> None:
        assert self._ready is not None
        while True:
            with self._lock:
                partial = self._queue[0] if self._queue else None
            if partial is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            data = encode(partial)
            try:
                await js.publish(
                    f"{SUBJECTS}.{partial.collector}",
                    data,
                    timeout=5.0,
                    headers={"Nats-Msg-Id": f"{partial.collector}:{partial.epoch}:{partial.seq}"},
                )
            except nats.errors.MaxPayloadError:  # would never pass: dropped, not retried for ever
                log.error(
                    "a partial larger than the NATS server takes was dropped; raise its max_payload",
                    bytes=len(data),
                    max_payload=js._nc.max_payload,
                )
                self.counters.inc("alert_partials_dropped_total")
            else:
                self.published += 1
                self.counters.inc("alert_partials_published_total")
            with self._lock:  # acknowledged (or refused): it may go, unless the queue dropped it meanwhile
                if self._queue and self._queue[0] is partial:
                    self._queued_bytes -= self._queue.popleft().nbytes()
                queued = len(self._queue)
            self.counters.set("alert_partials_queued", queued)


class PartialSubscriber:
    """The alerting node's side: reads the stream from the sequence after ``start_seq`` (0, no
    position yet: from what was published since this subscriber was made, less
    ``START_MARGIN_S``), in order, and hands each partial with its stream sequence to
    ``on_partials`` (a batch at a time; an empty one when nothing came for ``IDLE_S``). Bad
    messages are dropped, counted."""

    def __init__(
        self,
        url: str,
        counters: Counters,
        on_partials: Callable[[list[tuple[Partial, int]]], None],
        start_seq: Callable[[], int],
        retention_s: float = 3600.0,
        max_bytes: int = 1 << 30,
        batch: int = 64,
    ):
        self.url = url
        self.counters = counters
        self.on_partials = on_partials
        self.start_seq = start_seq
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.batch = batch
        # not "what comes once subscribed": collectors may publish before this node first
        # reaches the NATS server, and those partials are of its time
        self.since = datetime.datetime.fromtimestamp(time.time() - START_MARGIN_S, datetime.UTC)
        self._thread = _LoopThread("sluice-partials-in", self._main)
        self._link = _Link(url, "alerting", counters, "alert_partials_read_errors_total")
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    async def _main(self) -> None:
        while True:
            try:
                nc = await self._link.connect()
                try:
                    js = nc.jetstream()
                    await ensure_stream(js, self.retention_s, self.max_bytes)
                    await self._read(js)
                finally:
                    self.connected.clear()
                    await nc.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._link.failed(exc)
                await asyncio.sleep(_RETRY_S)

    async def _read(self, js: Any) -> None:
        after = self.start_seq()  # from the merged state each time: a reconnection goes on from there
        if after > 0:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=after + 1,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=60.0,
            )
        else:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=self.since,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=60.0,
            )
        sub = await js.pull_subscribe(f"{SUBJECTS}.>", stream=STREAM, config=config)
        self.connected.set()
        while True:
            try:
                messages = await sub.fetch(self.batch, timeout=IDLE_S)
            except nats.errors.TimeoutError:  # nothing pending: the clock alone moves the windows
                await asyncio.get_running_loop().run_in_executor(None, self.on_partials, [])
                continue
            got: list[tuple[Partial, int]] = []
            for msg in messages:
                seq = msg.metadata.sequence.stream
                try:
                    got.append((decode(msg.data), seq))
                except PartialError as exc:
                    log.warning("a partial that is not one was dropped", subject=msg.subject, seq=seq, error=str(exc))
                    self.counters.inc("alert_partials_invalid_total")
            if got:
                await asyncio.get_running_loop().run_in_executor(None, self.on_partials, got)
