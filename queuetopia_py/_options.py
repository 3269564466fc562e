"""`Options`: every option of a `Queuetopia` instance, validated in one place. See
docs/configuration.md; each default is named in `queuetopia_py.defaults`."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.engine import URL, Engine

from queuetopia_py import defaults
from queuetopia_py._errors import ConfigurationError, InvalidJobError
from queuetopia_py._job import (
    FailureMode,
    MoveTo,
    OnFailure,
    to_max_attempts,
    to_on_failure,
    to_timedelta,
    validate_name,
)
from queuetopia_py._performer import Performer, is_async
from queuetopia_py._schedules import Schedule, check_schedules
from queuetopia_py._sources import RowSource

# The largest `max_params_bytes` accepted: 64 MiB. (MariaDB and MySQL also refuse a
# statement longer than their `max_allowed_packet`, 16 MiB by default.)
_MAX_PARAMS_BYTES_CAP = 64 * 1024 * 1024


def default_node() -> str:
    """A node name unique to this instance: `host:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of a Queuetopia instance, validated. See docs/configuration.md."""

    repo: str | URL | Engine
    performer: type[Performer] | Performer | None = None
    scope: str = ""
    node: str = field(default_factory=default_node)
    poll_interval: float = defaults.POLL_INTERVAL
    max_concurrency: int = defaults.MAX_CONCURRENCY
    executor: Literal["thread", "process"] = "thread"
    disabled: bool = False
    table_prefix: str = defaults.TABLE_PREFIX
    cleanup_interval: float | None = None
    job_retention: timedelta = defaults.JOB_RETENTION
    timeout: timedelta = defaults.TIMEOUT
    max_backoff: timedelta = defaults.MAX_BACKOFF
    max_attempts: int = defaults.MAX_ATTEMPTS
    on_failure: FailureMode = OnFailure.GIVE_UP
    lock_lease: timedelta = defaults.LOCK_LEASE
    statement_timeout: timedelta = defaults.STATEMENT_TIMEOUT
    max_params_bytes: int = defaults.MAX_PARAMS_BYTES
    source: RowSource | None = None
    schedules: tuple[Schedule, ...] = ()

    @classmethod
    def parse(cls, options: dict[str, Any], default_scope: str) -> Options:
        """Validate raw keyword options; raise `ConfigurationError` naming the bad one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if options.get("repo") is None:
            raise ConfigurationError("repo: a database URL or SQLAlchemy Engine is required")
        values = dict(options)
        values.setdefault("scope", default_scope)
        try:
            validate_name("scope", values["scope"])
            if "node" in values:
                validate_name("node", values["node"])
            positive = ("timeout", "statement_timeout")
            for name in ("max_backoff", "job_retention", "lock_lease", *positive):
                if name in values:
                    values[name] = to_timedelta(name, values[name], allow_zero=name not in positive)
            if "max_attempts" in values:
                to_max_attempts(values["max_attempts"])
            if "on_failure" in values:
                mode, dead_letter = to_on_failure(values["on_failure"])
                values["on_failure"] = mode if dead_letter is None else MoveTo(dead_letter)
            if "poll_interval" in values:
                values["poll_interval"] = to_timedelta(
                    "poll_interval", values["poll_interval"]
                ).total_seconds()
            if values.get("cleanup_interval") is not None:
                values["cleanup_interval"] = to_timedelta(
                    "cleanup_interval", values["cleanup_interval"]
                ).total_seconds()
        except InvalidJobError as exc:
            raise ConfigurationError(str(exc)) from None
        if values.get("lock_lease", defaults.LOCK_LEASE) < timedelta(seconds=1):
            raise ConfigurationError(
                f"lock_lease: must be at least 1 second (got {values['lock_lease']!r})"
            )
        concurrency = values.get("max_concurrency", defaults.MAX_CONCURRENCY)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(f"max_concurrency: must be an int >= 1 (got {concurrency!r})")
        limit = values.get("max_params_bytes", defaults.MAX_PARAMS_BYTES)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= _MAX_PARAMS_BYTES_CAP
        ):
            raise ConfigurationError(
                f"max_params_bytes: must be an int from 1 to {_MAX_PARAMS_BYTES_CAP:,}"
                f" (got {limit!r})"
            )
        if values.get("executor", "thread") not in ("thread", "process"):
            raise ConfigurationError(
                f"executor: must be 'thread' or 'process' (got {values['executor']!r})"
            )
        if "schedules" in values:
            values["schedules"] = check_schedules(values["schedules"])
        source = values.get("source")
        if source is not None and not isinstance(source, RowSource):
            raise ConfigurationError(f"source: must be a RowSource (got {source!r})")
        performer = values.get("performer")
        if performer is not None and not (
            isinstance(performer, Performer)
            or (isinstance(performer, type) and issubclass(performer, Performer))
        ):
            raise ConfigurationError(
                f"performer: must be a Performer subclass or instance (got {performer!r})"
            )
        if performer is not None:
            # Hooks may also be set on an instance, or on a class after its definition.
            is_async(performer)
        return cls(**values)
