"""What the operations commands of `queuetopia` print: reports for people, JSON for scripts.

Everything here turns values the library returns (`Job`, `Page`, `Status`...) into a
`Report` (rich renderables: tables, styled lines, plain text) or JSON documents; nothing
reads the database and nothing prints.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from queuetopia_py._job import Job, JobState, JobSummary, MoveTo, Page, error_line
from queuetopia_py._status import QueueStatus, RunningAttempt, Status, Suspension

#: The queue states the `queues` table shows, most pressing first.
QUEUE_STATES = ("blocked", "suspended", "running", "waiting", "idle")
#: Width at which the summary line of an error is cut in tables.
ERROR_WIDTH = 48
#: Marks a blocked queue at the start of its row.
BLOCKED_MARK = "!"
#: What cut text ends with.
ELLIPSIS = "…"

#: What a command prints for people: tables, styled lines and plain lines, in order.
Report = list[RenderableType]

# -- JSON ----------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """`value` as JSON-ready data: datetimes as ISO-8601 strings, timedeltas as seconds
    (float), dataclasses as objects (a `Job` also gets its `state`), tuples as lists."""
    if isinstance(value, JobSummary):
        return job_json(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    return value


def job_json(job: JobSummary) -> dict[str, Any]:
    """Every field of `job`, plus its `state` and `round_attempts`, as JSON-ready data."""
    data: dict[str, Any] = {f.name: plain(getattr(job, f.name)) for f in dataclasses.fields(job)}
    data["state"] = job.state
    data["round_attempts"] = job.round_attempts
    return data


def dumps(document: Any) -> str:
    """One JSON document (indented) for `--json` output."""
    return json.dumps(plain(document), indent=2, ensure_ascii=False, default=str)


# -- text helpers --------------------------------------------------------------------------


def first_line(text: str | None, width: int = ERROR_WIDTH) -> str:
    """The first non-blank line of `text`, cut to `width` characters (see `shorten`)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return shorten(lines[0] if lines else "", width)


def error_summary(error: str | None, width: int = ERROR_WIDTH) -> str:
    """The line that says what went wrong (`error_line`), cut to `width`."""
    return shorten(error_line(error), width)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells, ending in `ELLIPSIS` when cut."""
    if cell_len(text) <= width:
        return text
    cut = Text(text)
    cut.truncate(width, overflow="ellipsis")
    return cut.plain


def fmt_time(value: datetime | None) -> str:
    """An instant as `YYYY-MM-DD HH:MM:SS` (UTC), or "-"."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(delta: timedelta) -> str:
    """A duration in the largest fitting units: `45s`, `3m20s`, `2h5m`, `3d4h`."""
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 and seconds != int(seconds) else f"{seconds:.0f}s"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"


def fmt_relative(value: datetime | None, now: datetime) -> str:
    """An instant with how far it is from `now`: `12:00:05 (in 5s)`, `(3m ago)`."""
    if value is None:
        return "-"
    # Whole seconds: the times shown are to the second.
    delta = timedelta(seconds=round((value - now).total_seconds()))
    if abs(delta) < timedelta(seconds=1):
        when = "now"
    elif delta > timedelta(0):
        when = f"in {fmt_duration(delta)}"
    else:
        when = f"{fmt_duration(-delta)} ago"
    return f"{fmt_time(value)} ({when})"


def fmt_progress(job: JobSummary) -> str:
    """What the job's running attempt last reported: `40% copying`, or "-"."""
    progress = job.progress
    if progress is None:
        return "-"
    parts = []
    if progress.fraction is not None:
        parts.append(f"{progress.fraction * 100:.0f}%")
    if progress.message:
        parts.append(first_line(progress.message, 40))
    return " ".join(parts) or "-"


def fmt_suspension(suspension: Suspension) -> str:
    """`since <time> by <who>: <reason>`."""
    text = f"since {fmt_time(suspension.suspended_at)} by {suspension.suspended_by}"
    return f"{text}: {suspension.reason}" if suspension.reason else text


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()).replace("\t", " ")


#: A column shortened to fit a terminal keeps at least this many characters.
_MIN_COLUMN = 12


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    row_styles: Sequence[str | None] | None = None,
    *,
    width: int | None = None,
    shrink: Sequence[str] = (),
    drop: Sequence[str] = (),
) -> Table:
    """A table with left-aligned columns two spaces apart, each cell on one line.

    `row_styles[i]` (a rich style, e.g. `"bold red"`) colors row `i`. With `width` (a
    terminal's, in cells), the widest of the columns headed `shrink` are shortened (their
    cells ending in `ELLIPSIS`) until the rows fit, none below its header or `_MIN_COLUMN`
    cells; if they still do not fit, the columns headed `drop` are left out, in that
    order, until they do.
    """
    body = [[_one_line(text) for text in row] for row in rows]
    natural = [cell_len(header) for header in headers]
    for row in body:
        for index, text in enumerate(row):
            natural[index] = max(natural[index], cell_len(text))
    shown = list(range(len(headers)))
    widths = dict(enumerate(natural))
    if width is not None:
        floors = [
            min(max(cell_len(h), _MIN_COLUMN), w) if h in shrink else w
            for h, w in zip(headers, natural, strict=True)
        ]
        droppable = [headers.index(h) for h in drop if h in headers]
        while True:
            fitted = _fitted([natural[i] for i in shown], [floors[i] for i in shown], width)
            widths = dict(zip(shown, fitted, strict=True))
            if sum(fitted) + 2 * (len(fitted) - 1) <= width or not droppable:
                break
            shown.remove(droppable.pop(0))
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    for index in shown:
        table.add_column(
            Text(headers[index], style="bold"),
            width=widths[index],
            no_wrap=True,
            overflow="ellipsis",
        )
    styles = list(row_styles or [])
    for index, row in enumerate(body):
        style = styles[index] if index < len(styles) else None
        table.add_row(*(Text(row[i]) for i in shown), style=style)
    return table


#: The width a report is laid out in: tables come fitted (`render_table`), and a line
#: longer than the terminal is the terminal's to wrap.
_UNBOUNDED = 1_000_000


def report_text(report: Report, *, color: bool = True) -> str:
    """The text of `report`, with ANSI colors unless `color` is false (`click.echo`
    drops them where they do not belong: a pipe, a file, `NO_COLOR`)."""
    console = Console(
        force_terminal=color,
        no_color=not color,
        width=_UNBOUNDED,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
    )
    with console.capture() as capture:
        for item in report:
            console.print(item)
    # A table pads its last column; the spaces would only get in the way of a pipe.
    return "\n".join(line.rstrip() for line in capture.get().splitlines())


def _fitted(widths: list[int], floors: list[int], width: int) -> list[int]:
    """Column widths whose lines (columns two spaces apart) fit in `width`: the widest
    column shortened first, one character at a time, none below its floor."""
    fitted = list(widths)
    excess = sum(fitted) + 2 * (len(fitted) - 1) - width
    while excess > 0:
        index = max(range(len(fitted)), key=lambda i: fitted[i] - floors[i])
        if fitted[index] <= floors[index]:
            break  # as narrow as it can be
        fitted[index] -= 1
        excess -= 1
    return fitted


# -- queues --------------------------------------------------------------------------------


def queue_state(queue: QueueStatus) -> str:
    """One of `QUEUE_STATES`: blocked (its head failed and waits for a retry or an
    operator), suspended, running (an attempt runs now), waiting (pending jobs, none
    running) or idle (no pending job)."""
    if queue.blocked:
        return "blocked"
    if queue.suspended is not None:
        return "suspended"
    if queue.running is not None:
        return "running"
    if queue.pending:
        return "waiting"
    return "idle"


def queue_json(scope_status: Status, queue: QueueStatus) -> dict[str, Any]:
    """One queue of `queues --json`."""
    head = queue.head
    lock = queue.lock
    return {
        "scope": scope_status.scope,
        "queue": queue.queue,
        "state": queue_state(queue),
        "blocked": queue.blocked,
        "pending": queue.pending,
        "failed": queue.failed,
        "head_job_id": None if head is None else head.id,
        "attempts": None if head is None else head.attempts,
        "round_attempts": None if head is None else head.round_attempts,
        "max_attempts": None if head is None else head.max_attempts,
        "next_attempt_at": plain(None if head is None else head.next_attempt_at),
        "failing_since": plain(None if head is None else head.failing_since),
        "last_error": None if head is None else head.error,
        "locked_by": None if lock is None else lock.node,
        "locked_until": plain(None if lock is None else lock.locked_until),
        "suspended": plain(queue.suspended),
        "head": plain(head),
        "running": None if queue.running is None else running_json(queue.running),
    }


def running_json(attempt: RunningAttempt) -> dict[str, Any]:
    """One running attempt, flattened: node, scope, queue, job id, times, progress."""
    return {
        "node": attempt.node,
        "scope": attempt.job.scope,
        "queue": attempt.queue,
        "job_id": attempt.job.id,
        "action": attempt.job.action,
        "attempt": attempt.job.attempts,
        "started_at": plain(attempt.started_at),
        "locked_until": plain(attempt.locked_until),
        "progress": plain(attempt.job.progress),
    }


def _running_attempts(statuses: Sequence[Status]) -> list[RunningAttempt]:
    attempts = [
        attempt
        for status in statuses
        for node_attempts in status.nodes.values()
        for attempt in node_attempts
    ]
    return sorted(attempts, key=lambda a: (a.node, a.job.scope, a.queue, a.job.id))


def queues_summary(statuses: Sequence[Status]) -> dict[str, int]:
    """Counts of every queue with pending work or a lock (shown or not), of those
    blocked, and of the suspended queues (a suspended scope's queues all count)."""
    return {
        "queues": sum(status.queue_count for status in statuses),
        "blocked": sum(status.blocked_count for status in statuses),
        "suspended": sum(
            status.queue_count
            if status.suspended is not None
            else sum(1 for s in status.suspensions if s.queue is not None)
            for status in statuses
        ),
    }


def summary_line(summary: Mapping[str, int]) -> str:
    """`N queues, M blocked, K suspended`."""
    noun = "queue" if summary["queues"] == 1 else "queues"
    return (
        f"{summary['queues']} {noun}, {summary['blocked']} blocked, "
        f"{summary['suspended']} suspended"
    )


def queues_json(statuses: Sequence[Status]) -> dict[str, Any]:
    """The document of `queues --json`."""
    return {
        "at": plain(statuses[0].at) if statuses else None,
        "summary": queues_summary(statuses),
        "queues": [queue_json(status, queue) for status in statuses for queue in status.queues],
        "suspended_scopes": [
            plain(status.suspended) for status in statuses if status.suspended is not None
        ],
        "running": [running_json(attempt) for attempt in _running_attempts(statuses)],
        "more": {status.scope: status.next_after for status in statuses if status.next_after},
    }


def _next_attempt(queue: QueueStatus, now: datetime) -> str:
    head = queue.head
    if head is None:
        return "-"
    running = queue.running
    if running is not None and running.job.id == head.id:
        # A live node renews its lock; a dead node's lock counts down to its take-over.
        left = timedelta(seconds=round((running.locked_until - now).total_seconds()))
        if left > timedelta(0):
            return f"running (lock expires in {fmt_duration(left)})"
        return f"lock expired {fmt_duration(-left)} ago (node gone?)"
    if head.next_attempt_at is None:
        return "manual retry" if head.state is JobState.BLOCKED else "-"
    return fmt_relative(head.next_attempt_at, now)


def render_queues(statuses: Sequence[Status], width: int | None = None) -> Report:
    """The `queues` report: one row per queue (blocked ones marked with "!" and in red),
    the summary line, suspended scopes, and the attempts running on each node; its table
    fitted to `width` (a terminal's) by shortening the last errors and the nodes."""
    headers = (
        " ",
        "SCOPE",
        "QUEUE",
        "STATE",
        "PENDING",
        "FAILED",
        "HEAD",
        "ATTEMPTS",
        "NEXT ATTEMPT",
        "LAST ERROR",
        "LOCKED BY",
        "UNTIL",
    )
    rows: list[list[str]] = []
    styles: list[str | None] = []
    for status in statuses:
        for queue in status.queues:
            head, lock = queue.head, queue.lock
            state = queue_state(queue)
            if state == "blocked" and queue.suspended is not None:
                state = "blocked, suspended"
            rows.append(
                [
                    BLOCKED_MARK if queue.blocked else "",
                    status.scope,
                    queue.queue,
                    state,
                    str(queue.pending),
                    str(queue.failed),
                    "-" if head is None else str(head.id),
                    "-" if head is None else f"{head.round_attempts}/{head.max_attempts}",
                    _next_attempt(queue, status.at),
                    "-" if head is None or not head.error else error_summary(head.error),
                    "-" if lock is None else lock.node,
                    "-" if lock is None else fmt_time(lock.locked_until),
                ]
            )
            if queue.blocked:
                styles.append("bold red")
            elif queue.suspended is not None:
                styles.append("yellow")
            else:
                styles.append(None)
    shrink = ("LAST ERROR", "LOCKED BY")
    # Narrower still, these are left out (`--json`, or the output piped, has them all):
    # the least needed first, and the scope last, when there is only one.
    drop: tuple[str, ...] = ("UNTIL", "FAILED", "HEAD", "LOCKED BY", "PENDING")
    if len(statuses) == 1:
        drop += ("SCOPE",)
    lines: Report = ["no queues"]
    if rows:
        lines = [render_table(headers, rows, styles, width=width, shrink=shrink, drop=drop)]
    summary = queues_summary(statuses)
    lines += ["", Text(summary_line(summary), style="bold red" if summary["blocked"] else "")]
    for status in statuses:
        if status.next_after is not None:
            lines.append(
                f"scope {status.scope}: {len(status.queues)} of {status.queue_count} queues"
                f" shown; the next ones: --scope {status.scope} --after {status.next_after}"
            )
        if status.suspended is not None:
            lines.append(
                Text(
                    f"scope {status.scope} suspended {fmt_suspension(status.suspended)}",
                    style="yellow",
                )
            )
        shown = {queue.queue for queue in status.queues}
        for suspension in status.suspensions:
            if suspension.queue is not None and suspension.queue not in shown:
                lines.append(
                    Text(
                        f"queue {suspension.queue} of scope {status.scope} suspended "
                        f"{fmt_suspension(suspension)} (nothing pending)",
                        style="yellow",
                    )
                )
    attempts = _running_attempts(statuses)
    lines.append("")
    if not attempts:
        lines.append("no running attempts")
        return lines
    lines.append("running attempts:")
    lines.append(
        render_table(
            ("NODE", "SCOPE", "QUEUE", "JOB", "ATTEMPT", "STARTED", "PROGRESS"),
            [
                [
                    attempt.node,
                    attempt.job.scope,
                    attempt.queue,
                    str(attempt.job.id),
                    str(attempt.job.attempts),
                    fmt_time(attempt.started_at),
                    fmt_progress(attempt.job),
                ]
                for attempt in attempts
            ],
            width=width,
            shrink=("PROGRESS", "NODE"),
        )
    )
    return lines


# -- jobs ----------------------------------------------------------------------------------


def job_when(job: Job) -> str:
    """When the job ran or will run: done at, next attempt, or its last attempt."""
    if job.done_at is not None:
        return f"done {fmt_time(job.done_at)}"
    if job.next_attempt_at is not None:
        return f"next {fmt_time(job.next_attempt_at)}"
    if job.attempted_at is not None:
        return f"last {fmt_time(job.attempted_at)}"
    return "-"


def render_jobs(jobs: Sequence[Job], width: int | None = None) -> Report:
    """The table of `jobs list` (its footer apart), fitted to `width` (a terminal's) by
    shortening the errors."""
    rows = [
        [
            str(job.id),
            job.queue,
            job.action,
            job.state,
            str(job.attempts),
            job_when(job),
            # A done job's error is an earlier attempt's: `jobs show` has it.
            "-" if job.done else error_summary(job.error) or "-",
        ]
        for job in jobs
    ]
    styles = ["red" if job.state in (JobState.RETRYING, JobState.BLOCKED) else None for job in jobs]
    if not rows:
        return ["no jobs"]
    return [
        render_table(
            ("ID", "QUEUE", "ACTION", "STATE", "ATTEMPTS", "NEXT ATTEMPT / DONE AT", "ERROR"),
            rows,
            styles,
            width=width,
            shrink=("ERROR",),
        )
    ]


def render_jobs_page(page: Page, width: int | None = None) -> Report:
    """A page of `jobs list`: a table of the jobs and a footer `page N of M (T jobs)`."""
    return [*render_jobs(page.items, width), page_footer(page)]


def page_footer(page: Page) -> str:
    """`page N of M (T jobs)`."""
    noun = "job" if page.total == 1 else "jobs"
    return f"page {page.page_number} of {page.total_pages} ({page.total} {noun})"


def after_footer(jobs: Sequence[Job], page_size: int) -> str:
    """The footer of a `jobs list --after` page: how to list the next ones."""
    if len(jobs) < page_size or not jobs:
        return "no more jobs"
    return f"the next ones: --after {jobs[-1].id}"


def jobs_after_json(scope: str, after: int, page_size: int, jobs: Sequence[Job]) -> dict[str, Any]:
    """The document of `jobs list --after --json`."""
    more = len(jobs) == page_size and bool(jobs)
    return {
        "scope": scope,
        "after": after,
        "page_size": page_size,
        "next_after": jobs[-1].id if more else None,
        "jobs": [job_json(job) for job in jobs],
    }


def jobs_page_json(scope: str | None, page: Page) -> dict[str, Any]:
    """The document of `jobs list --json`."""
    return {
        "scope": scope,
        "page_number": page.page_number,
        "page_size": page.page_size,
        "total_pages": page.total_pages,
        "total": page.total,
        "jobs": [job_json(job) for job in page.items],
    }


def _indented(text: str) -> Report:
    return [Text("  " + line if line else "") for line in text.splitlines()] or ["  "]


def render_job(job: Job) -> Report:
    """Every field of a job for `jobs show`: settings, times, progress, params and result
    (JSON), the whole error and the interventions."""
    attempts = f"{job.attempts} (max {job.max_attempts} per round)"
    if job.round_start:
        attempts += f"; this round: {job.round_attempts}, since attempt {job.round_start}"
    progress = job.progress
    fields: list[tuple[str, str]] = [
        ("scope", job.scope),
        ("queue", job.queue),
        ("action", job.action),
        ("state", job.state),
        ("attempts", attempts),
        (
            "on failure",
            str(MoveTo(job.dead_letter_queue)) if job.dead_letter_queue else job.on_failure,
        ),
        ("timeout", fmt_duration(job.timeout)),
        ("max backoff", fmt_duration(job.max_backoff)),
        ("unique key", job.unique_key or "-"),
        ("inserted at", fmt_time(job.inserted_at)),
        ("scheduled at", fmt_time(job.scheduled_at)),
        ("attempted at", fmt_time(job.attempted_at)),
        ("attempted by", job.attempted_by or "-"),
        # An ended job has no next attempt and is not failing any more.
        ("next attempt at", fmt_time(job.next_attempt_at) if job.pending else "-"),
        ("done at", fmt_time(job.done_at)),
        ("failing since", fmt_time(job.failing_since) if job.pending else "-"),
        (
            "progress",
            "-" if progress is None else f"{fmt_progress(job)} (at {fmt_time(progress.at)})",
        ),
    ]
    width = max(len(name) for name, _ in fields) + 1
    failing = job.state in ("retrying", "blocked")
    lines: Report = [Text(f"job {job.id}", style="bold")]
    for name, value in fields:
        text = f"  {(name + ':').ljust(width)} {value}"
        lines.append(Text(text, style="bold red" if name == "state" and failing else ""))
    lines.append("params:")
    lines += _indented(json.dumps(job.params, indent=2, ensure_ascii=False))
    lines.append("result:")
    lines += _indented(json.dumps(job.result, indent=2, ensure_ascii=False, default=str))
    lines.append("error of an earlier attempt:" if job.done else "error:")
    lines += _indented(job.error) if job.error else ["  -"]
    lines.append("interventions:")
    if job.interventions:
        lines.append(
            Padding(
                render_table(
                    ("AT", "ACTION", "BY", "REASON"),
                    [
                        [fmt_time(item.at), item.action, item.by, item.reason or "-"]
                        for item in job.interventions
                    ],
                ),
                (0, 0, 0, 2),
                expand=False,
            )
        )
    else:
        lines.append("  -")
    return lines
