"""queuetopia_py.contrib.otel's `instrument`: process-wide, idempotent, undone by
`uninstrument` (no database)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from queuetopia_py import _tracing
from queuetopia_py.contrib.otel import instrument


def test_instrument_is_idempotent_and_the_latest_provider_wins() -> None:
    provider = TracerProvider()
    first = instrument(tracer_provider=provider)
    try:
        assert instrument(tracer_provider=provider) is first
        assert first.instrumented and _tracing.tracer() is not None
        other = instrument()  # the global provider: it replaces the first
        assert other is not first and other.instrumented and not first.instrumented
        first.uninstrument()  # no longer installed: leaves the other in place
        assert other.instrumented
    finally:
        other.uninstrument()
    assert _tracing.tracer() is None
    other.uninstrument()  # again: nothing to do
    assert instrument(tracer_provider=provider) is not first  # a new one, once undone
    with instrument(tracer_provider=provider) as last:
        assert last.instrumented
    assert _tracing.tracer() is None
