"""Storage: every SQL statement of queuetopia lives in this package, one module a concern.

- `database`: the engine, the database clock, transactions, error translation, retries.
- `queues`: the queues table (one row a queue with pending work: its head, its due
  time, its pending count, its lock), kept exact in the transactions that change jobs.
- `jobs`: creating jobs and reading them (by id, listings by page or by key).
- `claims`: polls (which queues are due) and claims (a queue's lock and head).
- `records`: recording attempts, passing a queue's lock on, failure modes.
- `locks`: taking, renewing and releasing queue locks.
- `control`: operators' actions (cancel, abort, retry, suspend, resume).
- `inspection`: status pages and lookups across scopes.
- `cleaner`: deleting completed jobs, one node at a time.
- `announcements`: PostgreSQL's NOTIFY of new or freed work.
"""
