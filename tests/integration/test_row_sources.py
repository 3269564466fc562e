"""Row-sourced queues: a matching row inserted into an application's table is a job of
the source's scope, created in the inserting transaction by the installed trigger."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from recording import Recorder

from queuetopia_py import (
    ConfigurationError,
    Job,
    JobState,
    MoveTo,
    Queuetopia,
    RowSource,
    backfill_source,
    install_source,
    uninstall_source,
)
from queuetopia_py._cli import cli
from queuetopia_py._store.database import create_engine

metadata = sa.MetaData()
photos = sa.Table(
    "photos",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer),
    sa.Column("tag", sa.String(50)),
)
# Two columns of primary key, and no key column: each row is a queue of its own.
crops = sa.Table(
    "crops",
    metadata,
    sa.Column("photo_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("size", sa.String(10), primary_key=True),
)


def by_album(**options: Any) -> RowSource:
    return RowSource(photos, key=photos.c.album_id, when=photos.c.tag.is_(None), **options)


@pytest.fixture
def app(url: str) -> Iterator[sa.Engine]:
    """The application's engine, with its tables created."""
    engine = create_engine(url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def insert(app: sa.Engine, table: sa.Table, *rows: dict[str, Any]) -> None:
    """Insert `rows` in one committed transaction, one statement each."""
    with app.begin() as conn:
        for row in rows:
            conn.execute(table.insert().values(row))


def photo(i: int, album: int | None = 1, tag: str | None = None) -> dict[str, Any]:
    return {"id": i, "album_id": album, "tag": tag}


def source_queue(
    make_queue: Callable[..., Queuetopia],
    source: RowSource,
    scope: str = "photos-scope",
    **options: Any,
) -> Queuetopia:
    options.setdefault("poll_interval", 0.2)
    queue = make_queue(scope=scope, source=source, **options)
    install_source(queue.engine, queue)
    return queue


def jobs_of(queue: Queuetopia) -> list[tuple[str, str, dict[str, Any]]]:
    return [(j.queue, j.action, j.params) for j in queue.list_jobs()]


def test_an_inserted_row_is_one_job_with_its_primary_key(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(
        make_queue,
        by_album(),
        timeout=7,
        max_backoff=30,
        max_attempts=4,
        on_failure=MoveTo("photos_dead"),
    )
    insert(app, photos, photo(1, album=5))
    (job,) = queue.list_jobs()
    assert (job.queue, job.action, job.params) == ("photos:5", "photos", {"id": 1})
    assert job.state is JobState.PENDING
    assert (job.timeout, job.max_backoff, job.max_attempts) == (
        timedelta(seconds=7),
        timedelta(seconds=30),
        4,
    )
    assert (job.on_failure, job.dead_letter_queue) == ("move_to", "photos_dead")


def test_a_rolled_back_insert_creates_no_job(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(make_queue, by_album())
    with app.connect() as conn:
        conn.execute(photos.insert().values(photo(1)))
        conn.rollback()
    assert queue.list_jobs() == []


def test_rows_that_do_not_match_when_get_no_job(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(make_queue, by_album())
    insert(app, photos, photo(1, tag="done"), photo(2), photo(3, tag=""))
    assert jobs_of(queue) == [("photos:1", "photos", {"id": 2})]


def test_a_condition_with_quotes_percent_signs_and_colons(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    odd = "%'a:b\\%"
    queue = source_queue(
        make_queue,
        RowSource(photos, when=photos.c.tag == odd),
        scope="100%'s:scope",
        performer=Recorder(),
    )
    insert(app, photos, photo(1, tag=odd), photo(2, tag="%'a:b"), photo(3))
    assert [j.params for j in queue.list_jobs()] == [{"id": 1}]
    queue.start()  # the installed trigger is found, as defined


def test_without_key_each_row_is_a_queue_of_its_own(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(make_queue, RowSource(crops))
    insert(app, crops, {"photo_id": 1, "size": "s"}, {"photo_id": 1, "size": "m"})
    assert jobs_of(queue) == [
        ("crops:1,s", "crops", {"photo_id": 1, "size": "s"}),
        ("crops:1,m", "crops", {"photo_id": 1, "size": "m"}),
    ]


def test_a_null_key_is_the_empty_key(app: sa.Engine, make_queue: Callable[..., Queuetopia]) -> None:
    queue = source_queue(make_queue, by_album())
    insert(app, photos, photo(1, album=None), photo(2, album=None))
    assert [j.queue for j in queue.list_jobs()] == ["photos:", "photos:"]


def test_an_orm_model_class_and_a_key_by_name(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class Photo(Base):
        __table__ = photos

    queue = source_queue(make_queue, RowSource(Photo, key="album_id"))
    insert(app, photos, photo(1, album=3))
    assert jobs_of(queue) == [("photos:3", "photos", {"id": 1})]


def test_an_update_that_makes_when_true_enqueues_the_row(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(make_queue, by_album(on=("insert", "update")))
    insert(app, photos, photo(1, tag="new"), photo(2))
    assert [j.params for j in queue.list_jobs()] == [{"id": 2}]
    with app.begin() as conn:
        # 1 becomes a match; 2 was one already; 3 stays out.
        conn.execute(photos.update().where(photos.c.id == 1).values(tag=None))
        conn.execute(photos.update().where(photos.c.id == 2).values(album_id=1))
    insert(app, photos, photo(3, tag="x"))
    with app.begin() as conn:
        conn.execute(photos.update().where(photos.c.id == 3).values(tag="y"))
    assert [j.params for j in queue.list_jobs()] == [{"id": 2}, {"id": 1}]


def test_updates_enqueue_nothing_unless_asked(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    queue = source_queue(make_queue, by_album())
    insert(app, photos, photo(1, tag="new"))
    with app.begin() as conn:
        conn.execute(photos.update().values(tag=None))
    assert queue.list_jobs() == []


def test_rows_of_one_key_run_in_insertion_order_keys_in_parallel(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    # Album 2's first job waits until album 1's has started: they run side by side.
    started_1 = threading.Event()

    def behaviour(job: Job) -> None:
        if job.params["id"] == 101:
            assert started_1.wait(20), "album 1 did not run beside album 2"
        if job.params["id"] == 1:
            started_1.set()

    recorder = Recorder(behaviour)
    queue = source_queue(make_queue, by_album(), performer=recorder)
    insert(app, photos, photo(101, album=2))
    # Across transactions, and several rows in one transaction.
    insert(app, photos, photo(3), photo(1))
    insert(app, photos, photo(2), photo(102, album=2))
    insert(app, photos, photo(0))
    queue.start()
    recorder.wait(lambda r: len(r.finished) == 6)
    order = {
        q: [j.params["id"] for j in recorder.started if j.queue == q]
        for q in ("photos:1", "photos:2")
    }
    assert order == {"photos:1": [3, 1, 2, 0], "photos:2": [101, 102]}
    assert recorder.max_running_per_queue == 1
    assert recorder.max_running == 2


def test_a_failing_row_blocks_only_its_key(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    def behaviour(job: Job) -> None:
        if job.params["id"] == 1:
            raise RuntimeError("cannot classify")

    recorder = Recorder(behaviour)
    queue = source_queue(make_queue, by_album(), performer=recorder, max_backoff=60)
    insert(app, photos, photo(1, album=1), photo(2, album=1), photo(3, album=2))
    queue.start()
    recorder.wait(lambda r: len(r.failed) >= 1 and any(j.params["id"] == 3 for j in r.finished))
    ran = {j.params["id"] for j in recorder.started}
    assert 2 not in ran
    assert queue.get_job(queue.list_jobs(queue="photos:1")[1].id).state is JobState.PENDING  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mode", "states"),
    [
        ("give_up", [("photos:1", JobState.GIVEN_UP)]),
        ("block", [("photos:1", JobState.BLOCKED)]),
        (MoveTo("dead"), [("photos:1", JobState.DEAD_LETTERED), ("dead", JobState.DONE)]),
    ],
)
def test_each_failure_mode_applies_to_row_jobs(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], mode: Any, states: Any
) -> None:
    def behaviour(job: Job) -> None:
        if job.queue != "dead":
            raise RuntimeError("no")

    recorder = Recorder(behaviour)
    queue = source_queue(
        make_queue, by_album(), performer=recorder, max_attempts=1, on_failure=mode
    )
    insert(app, photos, photo(1))
    queue.start()
    recorder.wait(lambda r: len(r.failed) == 1 and len(r.finished) == len(states))
    queue.stop()
    assert [(j.queue, j.state) for j in queue.list_jobs()] == states


def test_install_and_uninstall_are_idempotent(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], url: str
) -> None:
    class Photos(Queuetopia, repo=url, scope="photos-scope", source=by_album()):
        pass

    install_source(url, Photos)
    install_source(url, Photos)
    insert(app, photos, photo(1))
    uninstall_source(url, Photos)
    uninstall_source(url, Photos)
    insert(app, photos, photo(2))
    assert [j.params for j in Photos().list_jobs()] == [{"id": 1}]
    install_source(app, Photos)  # an Engine does as well as a URL
    insert(app, photos, photo(3))
    assert [j.params for j in Photos().list_jobs()] == [{"id": 1}, {"id": 3}]


def test_install_on_a_connection_joins_its_transaction(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], url: str
) -> None:
    class Photos(Queuetopia, repo=url, scope="photos-scope", source=by_album()):
        pass

    with app.begin() as conn:
        install_source(conn, Photos)
        conn.execute(photos.insert().values(photo(1)))
    assert [j.params for j in Photos().list_jobs()] == [{"id": 1}]


def test_start_is_refused_until_the_source_is_installed_as_defined(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], url: str
) -> None:
    def photos_queue(source: RowSource) -> Queuetopia:
        return make_queue(scope="photos-scope", source=source, performer=Recorder())

    with pytest.raises(ConfigurationError, match=r"is not installed.*install_source"):
        photos_queue(by_album()).start()
    install_source(url, photos_queue(by_album()))
    photos_queue(by_album()).start()
    # Another condition, another event, other job options: another definition.
    for changed in (
        RowSource(photos, key=photos.c.album_id, when=photos.c.tag == "x"),
        by_album(on=("insert", "update")),
    ):
        with pytest.raises(ConfigurationError, match="different definition"):
            photos_queue(changed).start()
    changed_options = make_queue(
        scope="photos-scope", source=by_album(), performer=Recorder(), timeout=5
    )
    with pytest.raises(ConfigurationError, match="different definition"):
        changed_options.start()
    # Installing the new definition replaces the old one.
    install_source(url, changed_options)
    changed_options.start()
    insert(app, photos, photo(1))
    (job,) = changed_options.list_jobs()
    assert job.timeout == timedelta(seconds=5)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_start_is_refused_while_the_trigger_is_disabled(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], backend: str
) -> None:
    queue = source_queue(make_queue, by_album(), performer=Recorder())
    with app.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE photos DISABLE TRIGGER ALL")
    with pytest.raises(ConfigurationError, match="is disabled"):
        queue.start()


def test_two_scopes_may_source_one_table(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    tagged = source_queue(
        make_queue, RowSource(photos, when=photos.c.tag.is_not(None)), scope="tagged"
    )
    untagged = source_queue(make_queue, by_album(), scope="untagged")
    insert(app, photos, photo(1), photo(2, tag="cat"))
    assert jobs_of(untagged) == [("photos:1", "photos", {"id": 1})]
    assert jobs_of(tagged) == [("photos:2", "photos", {"id": 2})]
    uninstall_source(untagged.engine, untagged)
    insert(app, photos, photo(3), photo(4, tag="dog"))
    assert len(untagged.list_jobs()) == 1
    assert len(tagged.list_jobs()) == 2


def test_backfill_enqueues_existing_rows_in_primary_key_order_once(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    insert(app, photos, photo(5), photo(2), photo(9, tag="x"), photo(7, album=2), photo(1))
    queue = source_queue(make_queue, by_album(), performer=Recorder())
    assert queue.list_jobs() == []  # installing enqueues nothing
    insert(app, photos, photo(3))
    assert backfill_source(queue.engine, queue, where=photos.c.id != 1) == 3
    assert backfill_source(queue.engine, queue) == 1  # 1, left out above
    assert backfill_source(queue.engine, queue) == 0
    assert [j.params["id"] for j in queue.list_jobs(queue="photos:1")] == [3, 2, 5, 1]
    assert [j.params["id"] for j in queue.list_jobs(queue="photos:2")] == [7]


def test_backfills_at_the_same_time_take_turns(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    rows = 2_500  # three transactions of a backfill each
    with app.begin() as conn:
        conn.execute(photos.insert(), [photo(i, album=i % 3) for i in range(1, rows + 1)])
    queue = source_queue(make_queue, by_album())
    counts: list[int] = []
    both_ready = threading.Barrier(2)

    def backfill() -> None:
        both_ready.wait()
        counts.append(backfill_source(queue.engine, queue))

    threads = [threading.Thread(target=backfill) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(counts) == [0, rows] or sum(counts) == rows, counts
    for album in range(3):
        ids = [j.params["id"] for j in queue.list_jobs(queue=f"photos:{album}")]
        assert ids == [i for i in range(1, rows + 1) if i % 3 == album]


def test_a_backfill_on_a_connection_joins_its_transaction(
    app: sa.Engine, make_queue: Callable[..., Queuetopia]
) -> None:
    insert(app, photos, photo(1), photo(2))
    queue = source_queue(make_queue, by_album())
    with app.connect() as conn:
        assert backfill_source(conn, queue) == 2
        conn.rollback()
    assert queue.list_jobs() == []
    with app.begin() as conn:
        assert backfill_source(conn, queue) == 2
    assert [j.params["id"] for j in queue.list_jobs()] == [1, 2]


def test_source_options_are_checked(url: str) -> None:
    bad: list[Callable[[], object]] = [
        lambda: RowSource("photos"),
        lambda: RowSource(sa.Table("nokey", sa.MetaData(), sa.Column("x", sa.Integer))),
        lambda: RowSource(photos, key="nope"),
        lambda: RowSource(photos, key=crops.c.size),
        lambda: RowSource(photos, when="tag IS NULL"),
        lambda: RowSource(photos, when=crops.c.size == "s"),
        lambda: RowSource(photos, on=("delete",)),
        lambda: RowSource(photos, on="insert"),
        lambda: RowSource(photos, on=("update",)),
        lambda: Queuetopia(repo=url, source="photos"),
    ]
    for make in bad:
        with pytest.raises(ConfigurationError, match="source"):
            make()
    with pytest.raises(ConfigurationError, match="has no source"):
        install_source(url, Queuetopia)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_rows_job_starts_at_once_on_postgresql(
    app: sa.Engine, make_queue: Callable[..., Queuetopia], backend: str
) -> None:
    recorder = Recorder()
    # A poll a minute: a row picked up within seconds was announced by its trigger.
    queue = source_queue(make_queue, by_album(), performer=recorder, poll_interval=60)
    queue.start()
    registration = queue._subscription
    assert registration is not None and registration.listener.listening.wait(10)
    warm_up = queue.create_job("warm-up", "a", {})
    recorder.wait(lambda r: any(j.id == warm_up.id for j in r.finished))
    insert(app, photos, photo(1))
    recorder.wait(lambda r: any(j.queue == "photos:1" for j in r.finished), timeout=10)


@pytest.mark.parametrize("backend", ["mariadb"])
def test_a_user_without_the_trigger_privilege_is_told_the_fix(
    app: sa.Engine, url: str, backend: str
) -> None:
    user = f"qt_{uuid.uuid4().hex[:8]}"
    database = sa.make_url(url).database
    with app.begin() as conn:
        # Through the driver's formatting: %% is %.
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%'")
        conn.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {database}.* TO '{user}'@'%%'"
        )
    limited = sa.make_url(url).set(username=user, password="")
    try:

        class Photos(Queuetopia, repo=url, scope="photos-scope", source=by_album()):
            pass

        with pytest.raises(ConfigurationError, match="GRANT TRIGGER ON"):
            install_source(limited.render_as_string(hide_password=False), Photos)
    finally:
        with app.begin() as conn:
            conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")


ROWS_APP = """
import sqlalchemy as sa
from queuetopia_py import Queuetopia, RowSource

photos = sa.Table(
    "photos", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer), sa.Column("tag", sa.String(50)),
)

class Photos(Queuetopia, scope="cli-photos", source=RowSource(photos, key="album_id")):
    pass
"""


def test_the_rows_commands(
    app: sa.Engine, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"rows_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(ROWS_APP)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def rows(*args: str) -> Result:
        return runner.invoke(cli, ["rows", *args, "--repo", url], catch_exceptions=False)

    target = f"{module}:Photos"
    missing = rows("check", target)
    assert missing.exit_code == 1
    assert "is not installed" in missing.output and "queuetopia rows install" in missing.output
    assert rows("list").output.strip() == "no row source installed"
    insert(app, photos, photo(1, album=4))  # before the source: left to the backfill

    assert rows("install", target).exit_code == 0
    assert rows("check", target).exit_code == 0
    insert(app, photos, photo(2, album=4))
    listed = rows("list")
    assert listed.exit_code == 0
    assert "cli-photos" in listed.output and "photos" in listed.output
    assert "enabled" in listed.output
    (source,) = json.loads(rows("list", "--json").output)["sources"]
    assert (source["scope"], source["table"], source["event"]) == ("cli-photos", "photos", "insert")
    assert (source["enabled"], source["pending"], source["blocked"]) == (True, 1, 0)

    assert rows("backfill", target).output.strip() == "created 1 job"
    assert rows("backfill", target).output.strip() == "created 0 jobs"
    assert rows("uninstall", target).exit_code == 0
    assert rows("list").output.strip() == "no row source installed"


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photos.py"


def test_the_example_classifies_each_album_in_order(db_url: str) -> None:
    finished = subprocess.run(
        [sys.executable, str(EXAMPLE), db_url], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert [line for line in lines if line.startswith("photos:1:")] == [
        "photos:1: photo 1 (old cat) tagged cat",
        "photos:1: photo 2 (cat on a mat) tagged cat",
        "photos:1: photo 4 (fjord) tagged landscape",
    ]
    assert [line for line in lines if line.startswith("photos:2:")] == [
        "photos:2: photo 3 (alps) tagged landscape"
    ]
    assert lines[-1] == "tags: 1=cat, 2=cat, 3=landscape, 4=landscape, 5=done"
