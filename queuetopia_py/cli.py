"""The `queuetopia` command line: `migrate`, `worker` and `demo`.

Every option can also be given as an environment variable named after the command and
the option, e.g. `QUEUETOPIA_WORKER_REPO` for `queuetopia worker --repo`.

    $ queuetopia migrate postgresql://app@db/app
    $ queuetopia worker myapp.jobs:MailQueue --poll-interval 5
    $ queuetopia demo
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
import sqlalchemy as sa

from queuetopia_py import defaults
from queuetopia_py.errors import ConfigurationError, QueuetopiaError, SchemaMissingError
from queuetopia_py.migrations import LATEST, migrate
from queuetopia_py.queuetopia import Queuetopia

# Named explicitly: under `python -m queuetopia_py.cli`, __name__ is "__main__".
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
def cli() -> None:
    """queuetopia: strictly ordered, blocking job queues stored in an SQL database.

    Each option can also be set with an environment variable QUEUETOPIA_<COMMAND>_<OPTION>,
    e.g. QUEUETOPIA_WORKER_REPO.
    """


@cli.command("migrate")
@click.argument("url", envvar="QUEUETOPIA_MIGRATE_URL")
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
    "--repo", default=None, show_envvar=True, help="Database URL (overrides the class's)."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
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
    log_level: str,
) -> None:
    """Run the queues of a Queuetopia subclass until SIGTERM or SIGINT.

    MODULE:CLASS names the subclass, e.g. myapp.jobs:MailQueue (or set
    QUEUETOPIA_WORKER_QUEUE); the current directory is searched first. On SIGTERM or
    SIGINT no new attempt starts and running ones finish before the worker exits; a
    second signal exits at once.
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
                raise ConfigurationError(f"{exc} (give --repo or QUEUETOPIA_WORKER_REPO)") from exc
            raise
    repo_url = queue.options.repo
    with expected_errors(None if isinstance(repo_url, sa.Engine) else repo_url):
        stop_requested = _stop_on_signals()
        queue.start()  # checks the schema first
    logger.info(
        "worker started; stop with SIGTERM or Ctrl-C",
        extra={"scope": queue.scope, "node": queue.node},
    )
    try:
        stop_requested.wait()
        logger.info("stopping: waiting for running attempts to finish")
        finished = queue.stop()
    except KeyboardInterrupt:
        raise click.ClickException("interrupted again: exited without waiting") from None
    logger.info("worker stopped" if finished else "worker stopped; some attempts did not finish")


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
    from queuetopia_py.demo import run_demo

    # The demo prints each failure itself; the library's warnings would repeat them.
    configure_logging(log_level)
    with expected_errors():
        ok = run_demo(path)
    if not ok:
        raise click.exceptions.Exit(1)


def main() -> None:
    """The `queuetopia` console script."""
    cli(prog_name="queuetopia")


if __name__ == "__main__":
    main()
