"""A node in a process of its own, for test_otel.py: traced with OpenTelemetry (an
in-memory exporter), it runs a scope's jobs until one has succeeded, then writes the
spans it finished as JSON (the SDK's `ReadableSpan.to_json`, a list).

    python tests/integration/otel_node.py URL SCOPE JOB_ID SPANS_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from queuetopia_py import Job, Performer, Queuetopia
from queuetopia_py.contrib.otel import instrument


class Noop(Performer):
    """Succeeds at once."""

    def perform(self, job: Job) -> object:
        return None


def main(url: str, scope: str, job_id: int, out: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with instrument(tracer_provider=provider):
        queue = Queuetopia(repo=url, scope=scope, performer=Noop, poll_interval=0.2)
        queue.start()
        try:
            queue.wait_for(job_id, timeout=60)
        finally:
            queue.stop()
    spans = [json.loads(span.to_json()) for span in exporter.get_finished_spans()]
    out.write_text(json.dumps(spans))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
