"""The application of the row-sourced system test: inserts rows into `photos` (node.py's
`PHOTOS`) and never enqueues anything itself.

    python tests/system/row_app.py --repo URL --rows 240 --albums 6 --out FILE [--seed S]

Rows get ids 1, 2, ... and a random album each; a transaction inserts one to three of
them (by album, as a transaction writing several keys should). After each commit it
appends `id album` lines to `--out`, in insertion order, then pauses 10-50 ms.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import sqlalchemy as sa
from node import PHOTOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--albums", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    # SQLite: wait for the nodes' write transactions instead of failing at once.
    options = {"connect_args": {"timeout": 30}} if args.repo.startswith("sqlite") else {}
    engine = sa.create_engine(args.repo, **options)
    next_id = 1
    with open(args.out, "a", encoding="utf-8") as out:
        while next_id <= args.rows:
            count = min(rng.randint(1, 3), args.rows - next_id + 1)
            rows = [
                {"id": next_id + i, "album_id": rng.randrange(args.albums)} for i in range(count)
            ]
            rows.sort(key=lambda row: row["album_id"])
            with engine.begin() as conn:
                for row in rows:
                    conn.execute(PHOTOS.insert().values(row))
            out.writelines(f"{row['id']} {row['album_id']}\n" for row in rows)
            out.flush()
            next_id += count
            time.sleep(rng.uniform(0.01, 0.05))
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
