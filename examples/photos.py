"""Row-sourced queues, end to end: the application inserts `photos` rows and never
enqueues anything; each untagged photo is classified by a job its insert created, the
photos of one album one at a time and in order, albums in parallel.

    python examples/photos.py [URL]      # default: a SQLite file in a temporary directory

It prints one line per classified photo, then the tags.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import sqlalchemy as sa

from queuetopia_py import (
    Job,
    Performer,
    Queuetopia,
    RowSource,
    backfill_source,
    install_source,
    migrate,
)

metadata = sa.MetaData()
photos = sa.Table(
    "photos",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("album_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("tag", sa.String(50)),
)


class ClassifyPhoto(Performer):
    """Tags a photo, reading the row its job names (a row deleted since: nothing to do)."""

    engine: sa.Engine
    expected = 0

    def __init__(self) -> None:
        self.done = threading.Semaphore(0)
        self.printing = threading.Lock()  # albums run in parallel: one line at a time

    def perform(self, job: Job) -> object:
        with self.engine.begin() as conn:
            photo = conn.execute(sa.select(photos).where(photos.c.id == job.params["id"])).first()
            if photo is None or photo.tag is not None:
                self.done.release()
                return "skipped"
            tag = "cat" if "cat" in photo.name else "landscape"
            conn.execute(photos.update().where(photos.c.id == photo.id).values(tag=tag))
        with self.printing:
            print(f"{job.queue}: photo {photo.id} ({photo.name}) tagged {tag}", flush=True)
        self.done.release()
        return tag


performer = ClassifyPhoto()


class ClassifyPhotos(
    Queuetopia,
    performer=performer,
    scope="photos",
    poll_interval=0.2,
    source=RowSource(photos, key=photos.c.album_id, when=photos.c.tag.is_(None)),
):
    pass


def main(url: str) -> None:
    migrate(url)
    engine = sa.create_engine(url)
    performer.engine = engine
    metadata.create_all(engine)
    with engine.begin() as conn:  # rows from before the source
        conn.execute(photos.insert().values(id=1, album_id=1, name="old cat"))
    install_source(url, ClassifyPhotos)
    backfill_source(url, ClassifyPhotos)  # gives photo 1 its job
    with engine.begin() as conn:  # the application's inserts: no enqueue call
        conn.execute(photos.insert().values(id=2, album_id=1, name="cat on a mat"))
        conn.execute(photos.insert().values(id=3, album_id=2, name="alps"))
        conn.execute(photos.insert().values(id=4, album_id=1, name="fjord"))
        conn.execute(photos.insert().values(id=5, album_id=2, name="tagged", tag="done"))
    queue = ClassifyPhotos(repo=url)
    queue.start()
    for _ in range(4):
        if not performer.done.acquire(timeout=30):
            raise SystemExit("the photos were not classified within 30 s")
    queue.stop()
    with engine.connect() as conn:
        tags = conn.execute(sa.select(photos.c.id, photos.c.tag).order_by(photos.c.id)).all()
    print("tags:", ", ".join(f"{i}={tag}" for i, tag in tags))
    engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"sqlite:///{Path(tmp) / 'photos.db'}")
