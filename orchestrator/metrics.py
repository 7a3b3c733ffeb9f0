"""Prometheus metrics (``/metrics``): what to alert on.

Counters and histograms are updated where things happen (callbacks in the receiver, VOD calls in
the client, steps in the runner's transition listener, findings in the sweeper); gauges that are
counts in the database (runs by status, queue depths) are refreshed by the sweeper's ``metrics``
job, so a scrape never runs a query.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import machine as m
from orchestrator.runner import Transition
from orchestrator.vod.events import KNOWN_KINDS

_DURATIONS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.callbacks = Counter(
            "vodflow_callbacks",
            "Callbacks received, by source (vod, lvb), event type and outcome.",
            ["source", "type", "outcome"],
            registry=r,
        )
        self._callbacks: dict[tuple[str, str, str], Counter] = {}
        self.runs = Gauge(
            "vodflow_runs", "Runs by workflow and status.", ["workflow", "status"], registry=r
        )
        self.transitions = Counter(
            "vodflow_transitions",
            "Inputs applied to runs, by workflow, input kind and resulting status.",
            ["workflow", "input", "status"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "vodflow_step_duration_seconds",
            "From a step's first submit to its end, by workflow, step and outcome.",
            ["workflow", "step", "outcome"],
            buckets=_DURATIONS,
            registry=r,
        )
        self.vod_calls = Counter(
            "vodflow_vod_calls",
            "VOD API calls by action and result code (0 = success; -1 = no answer).",
            ["action", "code"],
            registry=r,
        )
        self.limiter_wait = Histogram(
            "vodflow_limiter_wait_seconds",
            "Time a VOD call waited for the shared quota, by action.",
            ["action"],
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.sweeper_findings = Counter(
            "vodflow_sweeper_findings",
            "What sweeps found (stalled, recovered, timeouts, expired leases, ...), by job.",
            ["job", "finding"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            "vodflow_inbox_depth",
            "Inbox events by status (pending, orphan, failed).",
            ["status"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "vodflow_outbox_depth", "Outbox commands not yet done.", registry=r
        )
        self.sweeper_stalled = Gauge(
            "vodflow_sweeper_job_stalled",
            "1 when a replica's sweeper job has not succeeded within three of its intervals.",
            ["job", "replica"],
            registry=r,
        )
        self.failed_timers = Gauge(
            "vodflow_timers_failed",
            "Timers that could not be applied: their runs wait until they are replayed.",
            registry=r,
        )
        self.database_up = Gauge(
            "vodflow_database_up",
            "1 when the database answers (asked at each scrape and /healthz), 0 when it does "
            "not: the gauges read from it then keep their last values.",
            registry=r,
        )

    def callback(self, source: str, kind: str, outcome: str) -> None:
        """Count a callback. Event types vodflow does not read count as ``other``: the type
        comes from the body, and each distinct label value would be a series of its own."""
        key = (source, kind if kind in KNOWN_KINDS or kind == "-" else "other", outcome)
        child = self._callbacks.get(key)
        if child is None:  # labels() takes a lock and builds its key: once per label set
            child = self._callbacks[key] = self.callbacks.labels(*key)
        child.inc()

    def transition(self, t: Transition) -> None:
        self.transitions.labels(t.workflow, t.entry.input, t.status.value).inc()

    def step_finished(self, workflow: str, step: m.StepState) -> None:
        if step.started_at is not None and step.finished_at is not None:
            seconds = (step.finished_at - step.started_at).total_seconds()
            self.step_seconds.labels(workflow, step.name, step.status.value).observe(seconds)

    def sweep(self, job: str, findings: dict[str, int]) -> None:
        for finding, count in findings.items():
            if count:
                self.sweeper_findings.labels(job, finding).inc(count)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")
