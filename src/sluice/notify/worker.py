"""One delivery worker per channel: a slow or unreachable destination on one channel never
holds up another. Each takes the channel's due notifications, groups them per user (a digest
where the user asked for one and the channel has it), delivers, and records the outcome."""

from __future__ import annotations

from collections import defaultdict

import structlog

from ..counters import Counters
from ..lifecycle import Worker
from ..state.secrets import SecretUnreadable
from .channel import Channel, DeliveryError
from .destinations import DestinationPolicy, DestinationRefused
from .outbox import Due, Outbox

log = structlog.get_logger(__name__)

#: a digest needs at least this many notifications due at once
DIGEST_MIN = 2


class DeliveryWorker:
    def __init__(
        self,
        outbox: Outbox,
        channel: Channel,
        counters: Counters,
        poll_s: float = 1.0,
        policy: DestinationPolicy | None = None,
    ):
        self.outbox = outbox
        self.policy = policy or DestinationPolicy()
        self.channel = channel
        self.counters = counters
        self.poll_s = poll_s
        self._worker = Worker(f"sluice-notify-{self.channel.name}", self._run, join_timeout_s=20, wake=self._wake)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def _wake(self) -> None:
        with self.outbox.wake:
            self.outbox.wake.notify_all()

    def _run(self) -> None:
        while not self._worker.stopping.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the database may be busy: try again on the next round
                log.exception("notification delivery round failed", channel=self.channel.name)
                busy = 0
            if not busy:
                with self.outbox.wake:
                    self.outbox.wake.wait(self.poll_s)

    def run_once(self) -> int:
        """Deliver what is due now; the number of notifications handled."""
        due = self.outbox.due(self.channel.name)
        by_user: dict[int, list[Due]] = defaultdict(list)
        for item in due:
            by_user[item.user_id].append(item)
        users = list(by_user.items())
        for position, (user_id, items) in enumerate(users):
            if self._worker.stopping.is_set():  # the rest goes back, for the next start or another node
                self.outbox.release(item for _, rest in users[position:] for item in rest)
                break
            try:
                prefs, system = self.outbox.context(user_id)
            except SecretUnreadable as exc:  # another server's key file: said, and retried later
                self.outbox.failed(items, str(exc))
                continue
            if self.channel.destination(prefs, system) is None:
                self.outbox.cancel(items, f"{self.channel.name} was switched off for this user before delivery")
                continue
            assert prefs is not None
            if not self.outbox.is_admin(user_id):
                try:
                    self.channel.check(prefs, self.policy)
                except DestinationRefused as exc:  # retrying would not help: given up, saying why
                    self.counters.inc("notifications_refused_total", len(items), channel=self.channel.name)
                    self.outbox.cancel(items, f"destination refused: {exc}")
                    continue
            digest = self.channel.name == "email" and prefs.email_digest and len(items) >= DIGEST_MIN
            groups = [items] if digest else [[item] for item in items]
            for position, group in enumerate(groups):
                try:
                    self.channel.deliver([item.notice for item in group], prefs, system)
                except DeliveryError as exc:
                    # the user's destination is down: the rest of theirs waits for the retry too
                    rest = [item for later in groups[position:] for item in later]
                    self.counters.inc("notification_failures_total", len(rest), channel=self.channel.name)
                    self.outbox.failed(rest, str(exc))
                    log.warning(
                        "notification not delivered, will retry",
                        channel=self.channel.name,
                        error=str(exc),
                        notifications=len(rest),
                    )
                    break
                self.outbox.delivered([item.id for item in group])
                self.counters.inc("notifications_delivered_total", len(group), channel=self.channel.name)
        return len(due)
