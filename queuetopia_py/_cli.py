"""The `queuetopia` command line.

Setting up and running:

    $ queuetopia migrate postgresql://app@db/app
    $ queuetopia worker myapp.jobs:MailQueue --poll-interval 5
    $ queuetopia demo

Operating the queues of a database (`--repo URL` or QUEUETOPIA_REPO, `--json` for scripts):

    $ queuetopia queues [--scope S]                 # status of every queue, blocked ones marked
    $ queuetopia jobs list --scope S [--state given_up] [--page 2]
    $ queuetopia jobs show 42
    $ queuetopia jobs create QUEUE ACTION '{"to": "a@b.c"}' --scope S
    $ queuetopia suspend [QUEUE] --scope S          # resume [QUEUE] --scope S
    $ queuetopia cancel 42 | abort 42 | retry 42 [--reason R] [--by B]
    $ queuetopia cleanup --scope S [--older-than SECONDS] [--include-ended]
    $ queuetopia schedules [--scope S]              # periodic jobs: next and last fire times
    $ queuetopia rows list                          # row sources installed, and their state
    $ queuetopia rows install|uninstall|backfill|check myapp.jobs:ClassifyPhotos
    $ queuetopia dashboard [--host H] [--port P]    # the web dashboard (the `web` extra)

Every option can also be given as an environment variable named after the command and
the option, e.g. `QUEUETOPIA_WORKER_REPO` for `queuetopia worker --repo`; the operations
commands share QUEUETOPIA_REPO and QUEUETOPIA_PREFIX.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import FrameType
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from queuetopia_py import __version__, defaults
from queuetopia_py._cli_tables import (
    Report,
    after_footer,
    dumps,
    fmt_duration,
    fmt_suspension,
    fmt_time,
    job_json,
    jobs_after_json,
    jobs_page_json,
    queues_json,
    render_job,
    render_jobs,
    render_jobs_page,
    render_queues,
    render_table,
    report_text,
)
from queuetopia_py._errors import (
    ConfigurationError,
    DatabaseError,
    JobNotFoundError,
    JobStateError,
    QueuetopiaError,
    SchemaMissingError,
)
from queuetopia_py._job import MAX_DURATION, STORED_STATES, Job, Page
from queuetopia_py._queuetopia import Queuetopia
from queuetopia_py._scopes import Scopes
from queuetopia_py._sources import (
    backfill_source,
    install_source,
    installed_sources,
    problem_of,
    uninstall_source,
)
from queuetopia_py._store.database import sqlite_file, translate
from queuetopia_py.migrations import LATEST, migrate

# Named explicitly: under `python -m queuetopia_py._cli`, __name__ is "__main__".
logger = logging.getLogger("queuetopia_py.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Attributes every LogRecord has; anything else came from `extra=` and is worth showing.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def safe_url(url: str | sa.URL) -> str:
    """`url` with its password hidden, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return str(url)


@contextmanager
def expected_errors(url: str | sa.URL | None = None) -> Iterator[None]:
    """Turn the errors a user can cause (bad URL, database down, missing tables) into a
    one-line message and exit code 1, without a traceback."""
    where = f" ({safe_url(url)})" if url else ""
    try:
        yield
    except SchemaMissingError as exc:
        message = str(exc)
        if "queuetopia migrate" not in message:
            message += "; run `queuetopia migrate URL` first"
        raise click.ClickException(f"{message}{where}") from exc
    except QueuetopiaError as exc:
        raise click.ClickException(f"{exc}{where}") from exc


class _ExtraFormatter(logging.Formatter):
    """Appends the structured `extra=` fields of a record as `key=value`."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        if not extra:
            return text
        return text + " " + " ".join(f"{k}={v}" for k, v in extra.items())


def configure_logging(level: str) -> None:
    """Log to stderr at `level`, showing each record's structured fields."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ExtraFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # APScheduler logs every poll at INFO; keep that for DEBUG.
    apscheduler_level = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger("apscheduler").setLevel(apscheduler_level)


def load_queue_class(path: str) -> type[Queuetopia]:
    """Import the Queuetopia subclass a `module:Class` path names (`Class` may be dotted:
    `module:Outer.Inner`), searching the current directory first, like other tools do.

    Raises `click.BadParameter` saying what is wrong with the path.

    >>> load_queue_class("myapp.jobs:MailQueue")
    <class 'myapp.jobs.MailQueue'>
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise click.BadParameter(
            f"{path!r} is not a 'module:Class' path (e.g. myapp.jobs:MailQueue)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise click.BadParameter(
                f"cannot import {module_name!r}: no module named {missing!r}"
                " (searched the current directory and PYTHONPATH)"
            ) from None
        raise click.BadParameter(f"importing {module_name!r} failed: {_describe(exc)}") from None
    except Exception as exc:
        raise click.BadParameter(f"importing {module_name!r} failed: {_describe(exc)}") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not (isinstance(target, type) and issubclass(target, Queuetopia)):
        raise click.BadParameter(
            f"{path!r} is {target!r}, not a subclass of queuetopia_py.Queuetopia"
        )
    return target


class Seconds(click.FloatRange):
    """A duration option in seconds: a finite number, not negative (or positive), at most
    `MAX_DURATION`."""

    def __init__(self, *, positive: bool = False) -> None:
        super().__init__(min=0, min_open=positive, max=MAX_DURATION.total_seconds())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):  # NaN passes any range check
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


def _queue_class_callback(
    _ctx: click.Context, _param: click.Parameter, value: str
) -> type[Queuetopia]:
    return load_queue_class(value)


def _describe(exc: BaseException) -> str:
    """`Type: message`, and where it was raised, without the whole traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


@click.group(
    context_settings={
        "auto_envvar_prefix": "QUEUETOPIA",
        "show_default": True,
        "help_option_names": ["-h", "--help"],
    }
)
@click.version_option(__version__, "-V", "--version", prog_name="queuetopia")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """queuetopia: strictly ordered, blocking job queues stored in an SQL database.

    Each option can also be set with an environment variable QUEUETOPIA_<COMMAND>_<OPTION>,
    e.g. QUEUETOPIA_WORKER_REPO; the commands that operate queues and jobs read their
    database URL from QUEUETOPIA_REPO and their table prefix from QUEUETOPIA_PREFIX.
    """
    # https://no-color.org: any value turns colors off, on a terminal too.
    if os.environ.get("NO_COLOR"):
        ctx.color = False


@cli.command("migrate")
@click.argument("url", envvar=["QUEUETOPIA_MIGRATE_URL", "QUEUETOPIA_REPO"])
@click.option(
    "--prefix",
    default=defaults.TABLE_PREFIX,
    show_envvar=True,
    help="Prefix of the table names.",
)
@click.option(
    "--to",
    type=click.IntRange(min=0),
    default=None,
    show_envvar=True,
    help=f"Schema version to upgrade or downgrade to (default: the newest, {LATEST}).",
)
def migrate_command(url: str, prefix: str, to: int | None) -> None:
    """Create or upgrade the queuetopia tables in the database at URL (idempotent).

    URL is an SQLAlchemy URL, e.g. postgresql://user@host/db, mysql://user@host/db or
    sqlite:///path/to/jobs.db (or set QUEUETOPIA_MIGRATE_URL).
    """
    with expected_errors(url):
        version = migrate(url, prefix=prefix, to=to)
    click.echo(f"schema version {version} ({prefix}* tables at {safe_url(url)})")


@cli.command("worker")
@click.argument(
    "queue_class",
    metavar="MODULE:CLASS",
    callback=_queue_class_callback,
    envvar="QUEUETOPIA_WORKER_QUEUE",
)
@click.option(
    "--repo",
    default=None,
    envvar=["QUEUETOPIA_WORKER_REPO", "QUEUETOPIA_REPO"],
    show_envvar=True,
    help="Database URL (overrides the class's).",
)
@click.option(
    "--poll-interval",
    type=Seconds(positive=True),
    default=None,
    show_envvar=True,
    help="Seconds between polls of the database (overrides the class's).",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=None,
    show_envvar=True,
    help="Queues this worker runs at once (overrides the class's).",
)
@click.option("--node", default=None, show_envvar=True, help="This worker's node name.")
@click.option(
    "--grace-period",
    type=Seconds(positive=True),
    default=None,
    show_envvar=True,
    help="On SIGTERM or SIGINT, wait at most this many seconds for running attempts to"
    " finish, then exit with status 1 (their locks expire within the lock lease). Default:"
    " wait as long as they run.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_envvar=True,
    help="Logging level (logs go to stderr).",
)
def worker_command(
    queue_class: type[Queuetopia],
    repo: str | None,
    poll_interval: float | None,
    max_concurrency: int | None,
    node: str | None,
    grace_period: float | None,
    log_level: str,
) -> None:
    """Run the queues of a Queuetopia subclass until SIGTERM or SIGINT.

    MODULE:CLASS names the subclass, e.g. myapp.jobs:MailQueue (or set
    QUEUETOPIA_WORKER_QUEUE); the current directory is searched first. On SIGTERM or
    SIGINT no new attempt starts and running ones finish, are recorded and release their
    queues' locks before the worker exits (within --grace-period, if given); a second
    signal exits at once.
    """
    configure_logging(log_level)
    given = {
        "repo": repo,
        "poll_interval": poll_interval,
        "max_concurrency": max_concurrency,
        "node": node,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    with expected_errors():
        try:
            queue = queue_class(**overrides)
        except ConfigurationError as exc:
            if repo is None and str(exc).startswith("repo:"):
                raise ConfigurationError(
                    f"{exc} (give --repo, QUEUETOPIA_WORKER_REPO or QUEUETOPIA_REPO)"
                ) from exc
            raise
    repo_url = queue.options.repo
    if not isinstance(repo_url, sa.Engine):
        _refuse_missing_sqlite_file(repo_url, queue.options.table_prefix)
    with expected_errors(None if isinstance(repo_url, sa.Engine) else repo_url):
        stop_requested = _stop_on_signals()
        queue.start()  # checks the schema first
    logger.info(
        "worker started; stop with SIGTERM or Ctrl-C",
        extra={"scope": queue.scope, "node": queue.node},
    )
    try:
        stop_requested.wait()
        logger.info(
            "stopping: waiting for running attempts to finish%s",
            "" if grace_period is None else f" (at most {grace_period:g} s)",
        )
        finished = queue.stop(timeout=grace_period)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted again: exited without waiting") from None
    if not finished:
        raise click.ClickException(
            "worker stopped before its running attempts finished; their locks expire"
            " within the lock lease and other nodes take their queues over"
        )
    logger.info("worker stopped")


def _stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT; the handlers then go back to the
    defaults, so a second signal ends the process at once."""
    requested = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        requested.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return requested


@cli.command("demo")
@click.option(
    "--path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    show_envvar=True,
    help="SQLite file to use (default: one in a temporary directory, deleted afterwards).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="ERROR",
    show_envvar=True,
    help="Logging level of the library's own logs (to stderr).",
)
def demo_command(path: str | None, log_level: str) -> None:
    """Watch three queues run on an embedded SQLite database, one blocked by a failing head.

    Prints one line per attempt, then a summary. Takes a few seconds.
    """
    from queuetopia_py._demo import run_demo

    # The demo prints each failure itself; the library's warnings would repeat them.
    configure_logging(log_level)
    with expected_errors():
        ok = run_demo(path)
    try:
        sys.stdout.flush()
    except OSError:
        # The reader went away (`queuetopia demo | head`): nothing is left to print, and
        # the interpreter's own flush at exit must not report it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not ok:
        raise click.exceptions.Exit(1)


# -- operations: queues, jobs, suspend/resume, cancel/abort/retry, cleanup ------------------

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class JobId(click.ParamType[int]):
    """A job id: a 64-bit integer from 1, as in every database."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a job id (a whole number from 1)", param, ctx)
        if not 1 <= number <= 2**63 - 1:
            self.fail(f"{value!r} is not a job id (a whole number from 1 to 2**63-1)", param, ctx)
        return number


JOB_ID = JobId()
MAX_PAGE_SIZE = 10_000
MAX_PAGE = 1_000_000_000


def ops_options(command: F) -> F:
    """Add the options every operations command takes: `--repo`, `--prefix`, `--json`."""
    command = click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=False,
        help="Print one JSON document on stdout instead of text.",
    )(command)
    return repo_options(command)


def repo_options(command: F) -> F:
    """Add the options that name the tables: `--repo` and `--prefix`."""
    command = click.option(
        "--prefix",
        default=defaults.TABLE_PREFIX,
        envvar="QUEUETOPIA_PREFIX",
        show_envvar=True,
        help="Prefix of the table names.",
    )(command)
    command = click.option(
        "--repo",
        metavar="URL",
        required=True,
        envvar="QUEUETOPIA_REPO",
        show_envvar=True,
        help="Database URL, e.g. postgresql://user@host/db or sqlite:///jobs.db.",
    )(command)
    return command


def force_option(command: F) -> F:
    """`--force`: act on a --scope the tables do not hold (yet)."""
    return click.option(
        "--force",
        is_flag=True,
        default=False,
        help="Use --scope even if the tables hold no job of it (else: refused, with the"
        " scopes they hold, as a likely typo).",
    )(command)


def _migrate_hint(prefix: str) -> str:
    extra = "" if prefix == defaults.TABLE_PREFIX else f" --prefix {prefix}"
    return f"`queuetopia migrate URL{extra}`"


@contextmanager
def ops_errors(url: str, prefix: str) -> Iterator[None]:
    """Turn the errors of an operations command into a one-line message and exit code 1:
    unknown job, action not allowed in the job's state, bad URL, unreachable database,
    missing tables (the message says to run `queuetopia migrate`)."""
    where = f" ({safe_url(url)})"
    try:
        yield
    except SchemaMissingError as exc:
        message = str(exc)
        if "queuetopia migrate" not in message:
            message += f"; run {_migrate_hint(prefix)} first"
        elif prefix != defaults.TABLE_PREFIX and "--prefix" not in message:
            message += f" (with --prefix {prefix})"
        raise click.ClickException(f"{message}{where}") from exc
    except (JobNotFoundError, JobStateError) as exc:
        raise click.ClickException(str(exc)) from exc
    except (DatabaseError, ConfigurationError) as exc:
        raise click.ClickException(f"{exc}{where}") from exc
    except QueuetopiaError as exc:
        raise click.ClickException(str(exc)) from exc
    except sa.exc.SQLAlchemyError as exc:  # read outside the library's calls
        raise click.ClickException(f"{translate(exc)}{where}") from exc


class Tables(Scopes):
    """The tables as the operations commands see them: scopes resolved from `--scope`,
    with usage errors that list the known scopes."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.url = url

    def only_scope(self) -> str | None:
        """The single scope in these tables (None when there is none); a usage error
        asking for `--scope` when there are several."""
        scopes = self.known_scopes()
        if len(scopes) > 1:
            shown = ", ".join(scopes[:10]) + (", ..." if len(scopes) > 10 else "")
            raise click.UsageError(
                f"--scope is required: the tables hold {len(scopes)} scopes ({shown})",
                click.get_current_context(silent=True),
            )
        return scopes[0] if scopes else None

    def resolve_scope(self, scope: str | None, *, force: bool = False) -> str | None:
        """The scope a command acts on: `scope` when the tables know it, or hold no
        scope at all, or with `force` (a usage error listing the known scopes
        otherwise: a mistyped scope would silently act on nothing); without one, the
        only scope of the tables (see `only_scope`)."""
        if scope is None:
            return self.only_scope()
        if force:
            return scope
        known = self.known_scopes()
        if known and scope not in known:
            shown = ", ".join(repr(name) for name in known[:10])
            more = f" and {len(known) - 10} more" if len(known) > 10 else ""
            raise click.UsageError(
                f"unknown scope {scope!r}: the tables hold {shown}{more}"
                " (--force to use it anyway)",
                click.get_current_context(silent=True),
            )
        return scope


def _refuse_missing_sqlite_file(url: str | sa.URL, prefix: str) -> None:
    """SQLite would create a missing file: say the database does not exist instead."""
    try:
        path = sqlite_file(sa.make_url(url))
    except Exception:
        return  # Queuetopia explains what is wrong with the URL
    if path is not None and not path.exists():
        raise click.ClickException(
            f"no SQLite database at {path}: check the URL, or create the tables with "
            f"{_migrate_hint(prefix)}"
        )


@contextmanager
def open_tables(url: str, prefix: str) -> Iterator[Tables]:
    """The tables at `url` for an operations command, checked to exist; errors inside
    the block become one-line messages (see `ops_errors`)."""
    with ops_errors(url, prefix):
        _refuse_missing_sqlite_file(url, prefix)
        tables = Tables(url, prefix)
        try:
            tables.check_schema(_migrate_hint(prefix))
            yield tables
        finally:
            tables.close()


def echo_report(report: Report) -> None:
    """Print a report: colors on a terminal, none in a pipe or under `NO_COLOR`."""
    click.echo(report_text(report))


def terminal_width() -> int | None:
    """The width to fit tables to: the terminal's, when standard output is one (a pipe or
    a file gets whole lines, for grep)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def echo_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(dumps(document))


@cli.command("queues")
@click.option("--scope", default=None, help="Show only this scope (default: every scope).")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_PAGE_SIZE),
    default=100,
    show_default=True,
    help="Show at most this many queues of each scope (blocked ones first).",
)
@click.option(
    "--after",
    default=None,
    metavar="QUEUE",
    help="With --scope: show the queues that follow QUEUE (the next page).",
)
@force_option
@ops_options
def queues_command(
    scope: str | None,
    limit: int,
    after: str | None,
    force: bool,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Show the status of each queue with pending work and the running attempts.

    One row per queue: pending and failed jobs, state, head job, its attempts, next
    attempt and last error, and the queue's lock (holder and until when). Blocked queues
    come first, the longest failing first; then the others by name, --limit of them per
    scope (the report says how to see the next ones).

    Blocked queues (their head job failed) are marked with "!" (and red on a terminal).
    The state is blocked, suspended, running, waiting (pending jobs, none running) or idle.
    """
    if after is not None and scope is None:
        raise click.UsageError("--after needs --scope: a page follows a queue of one scope")
    with open_tables(repo, prefix) as tables:
        if scope is not None:
            scope = tables.resolve_scope(scope, force=force)
        scopes = [scope] if scope is not None else tables.known_scopes()
        statuses = [tables.scope(name).status(limit, after=after) for name in scopes]
    if as_json:
        echo_json(queues_json(statuses))
    else:
        echo_report(render_queues(statuses, terminal_width()))


@cli.group("jobs")
def jobs_group() -> None:
    """List, show or create jobs."""


@jobs_group.command("list")
@click.option(
    "--scope", default=None, help="Scope of the jobs (required when the tables hold several)."
)
@click.option("--queue", default=None, help="Only the jobs of this queue.")
@click.option("--action", default=None, help="Only the jobs of this action.")
@click.option(
    "--state",
    type=click.Choice([str(s) for s in STORED_STATES], case_sensitive=False),
    default=None,
    help="Only the jobs in this state (pending includes retrying and blocked jobs).",
)
@click.option(
    "--page", type=click.IntRange(min=1, max=MAX_PAGE), default=1, help="Page number, from 1."
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1, max=MAX_PAGE_SIZE),
    default=50,
    help="Jobs per page.",
)
@click.option(
    "--after",
    type=JOB_ID,
    default=None,
    metavar="ID",
    help="List the jobs that follow job ID (instead of --page): as fast deep in the"
    " history as at its start, without counting the total.",
)
@force_option
@ops_options
def jobs_list_command(
    scope: str | None,
    queue: str | None,
    action: str | None,
    state: str | None,
    page: int,
    page_size: int,
    after: int | None,
    force: bool,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """List the jobs of a scope in the order they run, one page at a time.

    Shows each job's id, queue, action, state, attempts, next attempt (or when it was
    done) and a one-line summary of its error (for a traceback, the exception line),
    then "page N of M (T jobs)", or with --after, the option that lists the next ones.
    """
    if after is not None and page != 1:
        raise click.UsageError("--after and --page choose the page two ways: give one")
    with open_tables(repo, prefix) as tables:
        scope = tables.resolve_scope(scope, force=force)
        if scope is None:  # no job, lock or suspension at all in these tables
            listing = Page(items=[], total=0, page_number=page, page_size=page_size)
        elif after is not None:
            items = tables.scope(scope).list_jobs(
                queue, action=action, state=state, limit=page_size, after=after
            )
            if as_json:
                echo_json(jobs_after_json(scope, after, page_size, items))
            else:
                echo_report([*render_jobs(items, terminal_width()), after_footer(items, page_size)])
            return
        else:
            listing = tables.scope(scope).paginate_jobs(
                page_size, page, queue=queue, action=action, state=state
            )
    if as_json:
        echo_json(jobs_page_json(scope, listing))
    else:
        echo_report(render_jobs_page(listing, terminal_width()))


@jobs_group.command("show")
@click.argument("job_id", metavar="ID", type=JOB_ID)
@click.option("--scope", default=None, help="Scope of the job (default: looked up by id).")
@ops_options
def jobs_show_command(
    job_id: int, scope: str | None, repo: str, prefix: str, as_json: bool
) -> None:
    """Show every field of job ID: settings, times, progress, params, result, the whole
    error and the interventions on it (who, when, why)."""
    with open_tables(repo, prefix) as tables:
        job = tables.job(job_id, scope)
    if as_json:
        echo_json(job_json(job))
    else:
        echo_report(render_job(job))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members; a key given twice is refused (only one could be kept)."""
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise ValueError(f"the key {key!r} appears twice in one object")
        members[key] = value
    return members


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (no NaN or infinities)")


def parse_params(text: str) -> dict[str, Any]:
    """The JSON object `text` holds, as `create_job` takes it as params. Refuses, with
    `click.BadParameter` saying why, text that is not JSON, NaN and infinities (and
    numbers too large for a float), a key given twice in one object, and any value
    other than an object.

    >>> parse_params('{"to": "a@b.c", "tries": [1, 2.5, null]}')
    {'to': 'a@b.c', 'tries': [1, 2.5, None]}
    """
    try:
        value = json.loads(
            text, parse_constant=_not_json, parse_float=_finite, object_pairs_hook=_unique_keys
        )
    except RecursionError:
        raise click.BadParameter("is nested too deeply to be read") from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise click.BadParameter(f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise click.BadParameter(f"must be a JSON object ({{...}}), not {shown!r}")
    return value


def _params_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> dict[str, Any]:
    if value == "-":
        value = sys.stdin.read()
    return parse_params(value)


def _instant_callback(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO-8601 instant (e.g. 2030-05-01T09:30:00+00:00)"
        ) from None
    if instant.utcoffset() is None:
        raise click.BadParameter(
            f"{value!r} has no UTC offset (e.g. 2030-05-01T09:30:00+00:00 or ...Z)"
        )
    return instant


@jobs_group.command("create")
@click.argument("queue")
@click.argument("action")
@click.argument("params", default="{}", callback=_params_callback)
@click.option("--scope", required=True, help="Scope of the job.")
@click.option(
    "--timeout",
    type=Seconds(positive=True),
    default=None,
    show_default=False,
    help=f"Seconds an attempt may run (default: {defaults.TIMEOUT.total_seconds():g}).",
)
@click.option(
    "--max-backoff",
    type=Seconds(),
    default=None,
    show_default=False,
    help=f"Longest retry delay, seconds (default: {defaults.MAX_BACKOFF.total_seconds():g}).",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1, max=2**31 - 1),
    default=None,
    show_default=False,
    help=f"Attempts per round before its failure mode applies (default: {defaults.MAX_ATTEMPTS}).",
)
@click.option(
    "--scheduled-at",
    callback=_instant_callback,
    default=None,
    help="Not before this instant, ISO-8601 with a UTC offset (default: now).",
)
@click.option(
    "--on-failure",
    default=None,
    show_default=False,
    help="give_up (default), block, or move_to:QUEUE.",
)
@click.option(
    "--unique-key",
    default=None,
    metavar="KEY",
    help="While a pending job of the scope has this key, print that job instead.",
)
@force_option
@ops_options
def jobs_create_command(
    queue: str,
    action: str,
    params: dict[str, Any],
    scope: str,
    timeout: float | None,
    max_backoff: float | None,
    max_attempts: int | None,
    scheduled_at: datetime | None,
    on_failure: str | None,
    unique_key: str | None,
    force: bool,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Create a job at the end of QUEUE of a scope, with PARAMS, a JSON object (default
    {}; - reads it from standard input), and print it.

    Runs `create_job`: a job is written whole, or (an invalid value) not at all.
    """
    with open_tables(repo, prefix) as tables:
        tables.resolve_scope(scope, force=force)
        job = tables.scope(scope).create_job(
            queue,
            action,
            params,
            timeout=timeout,
            max_backoff=max_backoff,
            max_attempts=max_attempts,
            scheduled_at=scheduled_at,
            on_failure=on_failure,
            unique_key=unique_key,
        )
    if as_json:
        echo_json(job_json(job))
    elif unique_key is not None:  # created now, or pending already
        click.echo(f"job {job.id} ({job.scope}/{job.queue}, {job.action}) holds key {unique_key}")
    else:
        click.echo(f"created job {job.id} ({job.scope}/{job.queue}, {job.action})")


def _whom(queue: str | None, scope: str) -> str:
    return f"scope {scope}" if queue is None else f"queue {queue} of scope {scope}"


def _suspension_options(verb: str, reason_help: str) -> Callable[[F], F]:
    """QUEUE, --scope, --reason, --by and the common options of suspend/resume."""

    def decorate(command: F) -> F:
        command = ops_options(command)
        command = click.option("--by", default=None, help=f"Who {verb} (default: user@host).")(
            command
        )
        command = click.option("--reason", default=None, help=reason_help)(command)
        command = click.option(
            "--scope",
            default=None,
            help="Scope of the queue (required when the tables hold several).",
        )(command)
        command = force_option(command)
        return click.argument("queue", required=False, default=None)(command)

    return decorate


def _scope_to_suspend(tables: Tables, scope: str | None, force: bool) -> str:
    """The scope suspend/resume act on: --scope, or the only one of the tables."""
    resolved = tables.resolve_scope(scope, force=force)
    if resolved is None:
        raise click.UsageError(
            "--scope is required: the tables hold no scope yet",
            click.get_current_context(silent=True),
        )
    return resolved


@cli.command("suspend")
@_suspension_options("suspends", "Why (recorded with the suspension).")
def suspend_command(
    queue: str | None,
    force: bool,
    scope: str | None,
    reason: str | None,
    by: str | None,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Suspend a queue, or a whole scope.

    Without QUEUE the whole scope is suspended. No new attempt starts there until it is
    resumed, on any node; a running attempt finishes. Suspending again keeps the first
    record.
    """
    with open_tables(repo, prefix) as tables:
        scope = _scope_to_suspend(tables, scope, force)
        suspension = tables.scope(scope).suspend(queue, by=by, reason=reason)
    if as_json:
        echo_json(suspension)
    else:
        click.echo(f"{_whom(queue, scope)} suspended {fmt_suspension(suspension)}")


@cli.command("resume")
@_suspension_options("resumes", "Why.")
def resume_command(
    queue: str | None,
    force: bool,
    scope: str | None,
    reason: str | None,
    by: str | None,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Resume a suspended queue, or a whole scope.

    Without QUEUE the scope's own suspension is lifted; queues suspended one by one stay
    suspended.
    """
    with open_tables(repo, prefix) as tables:
        scope = _scope_to_suspend(tables, scope, force)
        instance = tables.scope(scope)
        resumed = instance.resume(queue, by=by, reason=reason)
        scope_suspended = queue is not None and any(s.queue is None for s in instance.suspensions())
    if as_json:
        echo_json(
            {
                "scope": scope,
                "queue": queue,
                "resumed": resumed,
                "scope_suspended": scope_suspended,
            }
        )
        return
    whom = _whom(queue, scope)
    click.echo(f"{whom} resumed" if resumed else f"{whom} was not suspended")
    if scope_suspended:
        click.echo(
            f"the whole scope {scope} is still suspended: "
            f"`queuetopia resume --scope {scope}` resumes it"
        )


def _job_action(
    action: str,
    job_id: int,
    scope: str | None,
    reason: str | None,
    by: str | None,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Run `cancel_job`, `abort_job` or `retry_job` and print the job afterwards."""
    with open_tables(repo, prefix) as tables:
        instance = tables.instance_of(job_id, scope)
        operations: dict[str, Callable[..., Job]] = {
            "cancel": instance.cancel_job,
            "abort": instance.abort_job,
            "retry": instance.retry_job,
        }
        job = operations[action](job_id, by=by, reason=reason)
    if as_json:
        echo_json(job_json(job))
        return
    done = {"cancel": "cancelled", "abort": "aborted", "retry": "retried"}[action]
    text = f"job {job.id} ({job.scope}/{job.queue}, {job.action}) {done}: state {job.state}"
    if job.next_attempt_at is not None and job.state in ("pending", "retrying"):
        text += f", next attempt {fmt_time(job.next_attempt_at)}"
    click.echo(text)


def _job_action_options(command: F) -> F:
    """ID, --scope, --reason, --by and the common options of cancel/abort/retry."""
    command = ops_options(command)
    command = click.option("--by", default=None, help="Who acts (default: user@host).")(command)
    command = click.option(
        "--reason", default=None, help="Why (recorded in the job's interventions)."
    )(command)
    command = click.option(
        "--scope", default=None, help="Scope of the job (default: looked up by id)."
    )(command)
    command = click.argument("job_id", metavar="ID", type=JOB_ID)(command)
    return command


_JOB_ACTION_HELP = {
    "cancel": """Cancel job ID: it will not run.

    Applies to a pending job whose attempt is not running now; its queue goes on with
    the next job.
    """,
    "abort": """Abort job ID: it will not be attempted again.

    Applies to a pending job, even while its attempt runs (an attempt that then
    succeeds still makes the job done); its queue goes on with the next job.
    """,
    "retry": """Retry job ID now.

    A head waiting for its next attempt runs at once; a job given up, aborted, cancelled
    or blocked gets a new round of attempts, back at its place in its queue.
    """,
}


def _job_action_command(action: str) -> click.Command:
    """The `cancel`, `abort` or `retry` command."""

    @_job_action_options
    def command(
        job_id: int,
        scope: str | None,
        reason: str | None,
        by: str | None,
        repo: str,
        prefix: str,
        as_json: bool,
    ) -> None:
        _job_action(action, job_id, scope, reason, by, repo, prefix, as_json)

    return click.command(action, help=_JOB_ACTION_HELP[action])(command)


for _action in _JOB_ACTION_HELP:
    cli.add_command(_job_action_command(_action))


@cli.command("cleanup")
@click.option("--scope", required=True, help="Scope whose done jobs are deleted.")
@click.option(
    "--older-than",
    type=Seconds(),
    default=None,
    show_default=False,
    help=(
        "Delete jobs done more than this many seconds ago "
        f"(default: {defaults.JOB_RETENTION.total_seconds():.0f}, the job_retention default)."
    ),
)
@click.option(
    "--include-ended",
    is_flag=True,
    default=False,
    help="Also delete jobs that ended without success (given up, cancelled, aborted, "
    "dead-lettered) that long ago.",
)
@force_option
@ops_options
def cleanup_command(
    scope: str,
    older_than: float | None,
    include_ended: bool,
    force: bool,
    repo: str,
    prefix: str,
    as_json: bool,
) -> None:
    """Delete a scope's done jobs; print how many.

    Runs `cleanup_jobs`: deletes the jobs of the scope done longer ago than --older-than
    (with --include-ended, also those that ended without success that long ago).
    """
    with open_tables(repo, prefix) as tables:
        tables.resolve_scope(scope, force=force)
        instance = tables.scope(scope)
        if older_than is None:
            deleted = instance.cleanup_jobs(include_ended=include_ended)
            retention = instance.options.job_retention
        else:
            deleted = instance.cleanup_jobs(older_than, include_ended=include_ended)
            retention = timedelta(seconds=older_than)
    if as_json:
        echo_json(
            {
                "scope": scope,
                "deleted": deleted,
                "older_than": retention,
                "include_ended": include_ended,
            }
        )
    else:
        noun = "job" if deleted == 1 else "jobs"
        which = "done or ended" if include_ended else "done"
        click.echo(
            f"deleted {deleted} {noun} of scope {scope} {which} more than "
            f"{fmt_duration(retention)} ago"
        )


# -- schedules ---------------------------------------------------------------------------


@cli.command("schedules")
@click.option("--scope", default=None, help="Show only this scope (default: every scope).")
@ops_options
def schedules_command(scope: str | None, repo: str, prefix: str, as_json: bool) -> None:
    """Show the periodic jobs' schedules as the database records them: next fire time,
    latest fire time dealt with, and the job last created."""
    with open_tables(repo, prefix) as tables:
        statuses = tables.schedules(scope)
    if as_json:
        echo_json({"schedules": [dataclasses.asdict(status) for status in statuses]})
        return
    if not statuses:
        click.echo("no schedule")
        return
    headers = ("scope", "schedule", "definition", "next fire", "last fire", "last job")
    rows = [
        (
            s.scope,
            s.name,
            s.definition,
            fmt_time(s.next_fire_at),
            fmt_time(s.last_fire_at),
            "-" if s.last_job_id is None else str(s.last_job_id),
        )
        for s in statuses
    ]
    echo_report([render_table(headers, rows, width=terminal_width(), shrink=("scope",))])


# -- dashboard ---------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--no-auth",
    is_flag=True,
    default=False,
    help="Let anyone who reaches the dashboard in (only with a loopback --host).",
)
@click.option(
    "--read-only", is_flag=True, default=False, help="Show the queues; refuse every action."
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@repo_options
def dashboard_command(
    host: str, port: int, no_auth: bool, read_only: bool, log_level: str, repo: str, prefix: str
) -> None:
    """Serve the dashboard: the queues, blocked ones first, with the actions that
    unblock them (needs the `web` extra: pip install 'queuetopia_py[web]').

    Signing in takes the HTTP Basic credentials set in QUEUETOPIA_DASHBOARD_USER and
    QUEUETOPIA_DASHBOARD_PASSWORD; without them the command refuses to start, unless
    --no-auth on a loopback --host. Each action is recorded on the job with the user
    as `by`. The Prometheus metrics are served at /metrics.
    """
    user = os.environ.get("QUEUETOPIA_DASHBOARD_USER", "")
    password = os.environ.get("QUEUETOPIA_DASHBOARD_PASSWORD", "")
    if no_auth:
        if not _loopback(host):
            raise click.UsageError(
                f"--no-auth serves only a loopback --host (127.0.0.1, ::1, localhost), not"
                f" {host!r}: anyone who reaches it could see the jobs and act on them"
            )
    elif not user or not password:
        raise click.UsageError(
            "set QUEUETOPIA_DASHBOARD_USER and QUEUETOPIA_DASHBOARD_PASSWORD (HTTP Basic"
            " sign-in), or pass --no-auth to serve this machine only"
        )
    try:
        import uvicorn

        from queuetopia_py.web import basic_auth, create_app
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs the web extra: pip install 'queuetopia_py[web]' ({exc})"
        ) from exc
    with open_tables(repo, prefix):
        pass  # the tables exist, at this version's schema
    with ops_errors(repo, prefix):
        app = create_app(
            repo,
            auth=None if no_auth else basic_auth(user, password),
            read_only=read_only,
            table_prefix=prefix,
        )
    click.echo(f"queuetopia dashboard on http://{host}:{port}/ ({safe_url(repo)})", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())


# -- row sources -------------------------------------------------------------------------


@cli.group("rows")
def rows_group() -> None:
    """Row-sourced queues: the triggers that make an application's rows jobs."""


@rows_group.command("list")
@ops_options
def rows_list_command(repo: str, prefix: str, as_json: bool) -> None:
    """List the row sources installed in the database: scope, table, event, whether the
    trigger is enabled, and the pending jobs and blocked queues of the scope."""
    with ops_errors(repo, prefix):
        _refuse_missing_sqlite_file(repo, prefix)
        reports = installed_sources(repo, prefix)
    if as_json:
        echo_json({"sources": [dataclasses.asdict(report) for report in reports]})
        return
    if not reports:
        click.echo("no row source installed")
        return
    rows = [
        (
            r.scope or "?",
            r.table,
            r.event or "?",
            "enabled" if r.enabled else "DISABLED",
            str(r.pending),
            str(r.blocked),
            r.trigger,
        )
        for r in reports
    ]
    headers = ("scope", "table", "on", "trigger state", "pending", "blocked", "trigger")
    styles = [None if r.enabled else "bold red" for r in reports]
    echo_report([render_table(headers, rows, styles, width=terminal_width(), shrink=("scope",))])


def _source_command(command: F) -> F:
    """The argument and option of a command on one class's source."""
    command = click.option(
        "--repo",
        metavar="URL",
        default=None,
        envvar="QUEUETOPIA_REPO",
        show_envvar=True,
        help="Database URL (default: the class's repo).",
    )(command)
    return click.argument("queue_class", metavar="MODULE:CLASS", callback=_queue_class_callback)(
        command
    )


def _on_source(
    action: Callable[[Any, type[Queuetopia]], T], queue_class: type[Queuetopia], repo: str | None
) -> T:
    """`action(repo, queue_class)` on `--repo` or the class's repo, its errors made one-line
    messages."""
    given = repo if repo is not None else queue_class._class_options.get("repo")
    if given is None:
        raise click.UsageError(f"{queue_class.__qualname__} has no repo: give --repo URL")
    with expected_errors(None if isinstance(given, sa.Engine) else given):
        return action(given, queue_class)


@rows_group.command("install")
@_source_command
def rows_install_command(queue_class: type[Queuetopia], repo: str | None) -> None:
    """Install (or bring up to date) the row source of MODULE:CLASS: from then on, each
    matching row inserted gets a job in its transaction. Idempotent."""
    _on_source(install_source, queue_class, repo)
    click.echo(f"row source of {queue_class.__qualname__} installed")


@rows_group.command("uninstall")
@_source_command
def rows_uninstall_command(queue_class: type[Queuetopia], repo: str | None) -> None:
    """Remove the row source of MODULE:CLASS (its jobs stay). Idempotent."""
    _on_source(uninstall_source, queue_class, repo)
    click.echo(f"row source of {queue_class.__qualname__} removed")


@rows_group.command("backfill")
@_source_command
def rows_backfill_command(queue_class: type[Queuetopia], repo: str | None) -> None:
    """Create jobs, in primary-key order, for the matching rows of MODULE:CLASS's source
    table that have none (rows inserted before the source was installed)."""
    created = _on_source(backfill_source, queue_class, repo)
    click.echo(f"created {created} {'job' if created == 1 else 'jobs'}")


@rows_group.command("check")
@_source_command
def rows_check_command(queue_class: type[Queuetopia], repo: str | None) -> None:
    """Exit with status 1, saying why, unless the row source of MODULE:CLASS is installed
    as the class defines it, and enabled (what starting a worker checks)."""
    problem = _on_source(problem_of, queue_class, repo)
    if problem is not None:
        raise click.ClickException(
            f"{problem}: run `queuetopia rows install MODULE:{queue_class.__qualname__}`"
        )
    click.echo(f"row source of {queue_class.__qualname__} installed as defined")


def main() -> None:
    """The `queuetopia` console script."""
    cli(prog_name="queuetopia")


if __name__ == "__main__":
    main()
