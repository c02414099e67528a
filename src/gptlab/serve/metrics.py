"""What the server counts, in Prometheus' text format at GET /metrics (prometheus-client).

Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a millisecond (a tiny model's decode step) to a minute (a long queue).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The server's counters, gauges and histograms, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gptlab_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.tokens_in = Counter("gptlab_prompt_tokens", "prompt tokens submitted to the model", registry=r)
        self.tokens_out = Counter("gptlab_generated_tokens", "tokens generated", registry=r)
        self.running = Gauge("gptlab_running_sequences", "sequences in the running batch", registry=r)
        self.waiting = Gauge("gptlab_waiting_sequences", "sequences waiting for a row of the batch", registry=r)
        self.ttft = Histogram(
            "gptlab_time_to_first_token_seconds",
            "from submission to a sequence's first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_latency = Histogram(
            "gptlab_time_per_token_seconds", "between two tokens of one sequence", buckets=_LATENCY_BUCKETS, registry=r
        )


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text exposition of the server's metrics."""
    return Response(generate_latest(request.app.state.service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
