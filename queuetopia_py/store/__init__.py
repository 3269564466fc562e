"""Storage: every SQL statement of queuetopia lives in this package.

`database` holds the engine, the database clock and error handling; `jobs` the
statements that create and read jobs; `claims` the ones the scheduler runs (take a
queue's lock and head, record an attempt, release or renew a lock).
"""
