"""Prometheus exposition of the collector's counters (``/metrics``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from ..counters import Counters

HELP = {
    "datagrams_total": "Datagrams received, per exporter and export protocol",
    "flows_total": "Flows decoded, per exporter and export protocol",
    "decode_errors_total": "Datagrams, sets or samples that could not be decoded, by reason",
    "template_misses_total": "Data sets that arrived before their template",
    "sequence_gaps_total": "Exporter-side loss seen as sequence number gaps (v5/IPFIX: flows, v9: datagrams)",
    "sequence_resets_total": "Sequence numbers that went backwards (exporter restart or reordering)",
    "templates_learned_total": "Templates learned or changed",
    "templates_redefined_total": "Templates re-defined with a different layout",
    "templates_withdrawn_total": "IPFIX template withdrawals",
    "templates_evicted_total": "Templates forgotten because the cache was full",
    "sets_dropped_total": "Data sets dropped unread, by reason",
    "trailing_bytes_total": "Bytes after the end of a PDU (zero fill, concatenated PDUs)",
    "sflow_counter_samples_total": "sFlow counter samples (counted, not stored)",
    "sflow_non_ip_samples_total": "sFlow flow samples of non-IP frames (counted, not stored)",
    "sflow_unknown_samples_total": "sFlow samples of an unknown format",
    "receive_errors_total": "Errors reading the UDP sockets",
    "batches_total": "Batches of datagrams decoded",
    "sink_errors_total": "Failures handing flow batches to storage/alerting",
    "socket_drops": "Datagrams the kernel dropped on a listening socket (receive buffer full)",
    "session_worker_restarts_total": "Session worker processes started again after they died",
    "datagrams_lost_per_second": "Datagrams the kernel dropped per second over the last 10 s",
    "flows_lost_per_second": "Flows lost to overload per second over the last 10 s (kernel drops x flows per datagram)",
    "overloaded": "1 while the server lost flows or alert rows to overload within the last 10 s",
    "pending_sets": "Data sets waiting for their template",
    "flows_per_second": "Flows decoded per second over the last second",
    "exporter_last_datagram_seconds": "Unix time of the last datagram from an exporter, per protocol",
    "templates_active": "Templates currently known",
    "alert_definitions_active": "Enabled alert definitions being evaluated",
    "alert_definitions_failed": "Enabled alert definitions set aside because they failed (see the API's status/error)",
    "alert_definition_failures_total": "Times an alert definition failed to prepare or evaluate (the others went on)",
    "alert_evaluation_errors_total": "Alert evaluations of a batch that failed for all definitions of an entity type",
    "alert_rows_evaluated_total": "Session rows evaluated against the alert definitions",
    "alert_evaluations_total": "Alert evaluations run (rows evaluated / evaluations: the rows an evaluation takes)",
    "alert_evaluation_seconds_total": "Wall time spent in alert evaluations (a rate near 1: evaluation is always busy)",
    "alert_rows_dropped_total": "Session rows not evaluated because the alert queue was full",
    "alert_rows_pending": "Session rows waiting for alert evaluation",
    "alert_entities_dropped_total": "Entity rows not evaluated because the entity table was full",
    "alert_pairs_dropped_total": (
        "(entity, peer) pairs of unique hosts/ports not kept because a definition held alerts.max_pairs_per_definition"
    ),
    "alert_events_total": "Alert triggers (a definition finding an entity over its threshold)",
    "alert_partials_published_total": "Partial alert windows this node published to the stream (cluster)",
    "alert_partials_queued": "Partial alert windows waiting to be published (the stream away or slow)",
    "alert_partials_dropped_total": "Partial alert windows dropped unpublished: the queue was full",
    "alert_partials_publish_errors_total": "Failures to connect or publish to the NATS stream (retried)",
    "alert_partials_merged_total": "Partial alert windows the alerting node merged",
    "alert_partials_invalid_total": "Messages in the stream that were not partials (dropped)",
    "alert_partials_read_errors_total": "Failures to connect to or read the NATS stream (retried)",
    "alert_events_recorded_before_total": "Triggers of partials merged again after a restart, already recorded",
    "alert_record_errors_total": "Failures writing alert records (retried)",
    "alert_events_dropped_total": "Triggers given up after the state database failed for long (the oldest first)",
    "alert_state_bytes": "Memory of each alert definition's window state",
    "alert_definition_cpu_seconds_total": "CPU time spent evaluating each alert definition (rows folded, window slid)",
    "alert_rows_cpu_seconds_total": "CPU time spent making each entity type's rows, shared by its alert definitions",
    "alert_history_cpu_seconds_total": "CPU time spent remembering each session's last rows for COUNT",
    "alert_index_bytes": "Memory of the entity tables shared by alert definitions, per entity type",
    "alert_window_spread_steps": (
        "Steps of an alert definition's window held as an even spread because its past steps outgrew "
        "alerts.step_bytes_per_definition (0: exact)"
    ),
    "alert_state_save_errors_total": "Failures saving the alert window state to disk",
    "alert_state_save_cpu_seconds": "CPU time the last snapshot of the alert window state took to write",
    "notifications": "Notifications in the outbox, per channel and state (pending, delivered, dead)",
    "notifications_delivered_total": "Notifications delivered, per channel",
    "notification_failures_total": "Failed delivery attempts, per channel (retried with backoff until dead)",
}


class CountersCollector(PromCollector):
    def __init__(self, counters: Counters, prefix: str = "sluice_"):
        self.counters = counters
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for (name, labels), value in sorted(self.counters.snapshot().items()):
            family = families.get(name)
            if family is None:
                label_names = [k for k, _ in labels]
                doc = HELP.get(name, name.replace("_", " "))
                if name.endswith("_total"):
                    family = CounterMetricFamily(self.prefix + name[: -len("_total")], doc, labels=label_names)
                else:
                    family = GaugeMetricFamily(self.prefix + name, doc, labels=label_names)
                families[name] = family
            family.add_metric([v for _, v in labels], value)  # type: ignore[attr-defined]
        yield from families.values()
