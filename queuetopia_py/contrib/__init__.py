"""Integrations with other tools, each behind an extra of its own (`prometheus`, `otel`)."""
