// Shared pieces of the Node.js peers of bench/compare.py (pgboss.mjs, graphile.mjs): the
// same command line, result line, "ready" handshake, queue names, enqueue orders, order
// check and result keys as bench/workerio.py and bench/peers.py, in JavaScript.

import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import pg from "pg";

export const RESULT_PREFIX = "BENCH-RESULT ";
export const READY_LINE = "BENCH-READY";
export const QUEUE_PREFIX = "q";
// Jobs per call when pre-enqueueing (untimed), as peers.py's PREPARE_BATCH.
export const PREPARE_BATCH = 5_000;
// Milliseconds between two reads of the database while waiting for the last records.
export const RECORD_POLL_MS = 5;

// The roles compare.py runs (workerio.WORKER_ROLES), plus the untimed set-up it runs in a
// process of its own before a measured run (what peers.install / peers.prepare do in
// compare.py's process for the Python peers).
export const ROLES = [
  "throughput",
  "enqueue",
  "latency-worker",
  "latency-producer",
  "install",
  "prepare",
];

/** The options of workerio.add_worker_arguments, plus each peer's own (`extra`). */
export function parseCommandLine(extra = {}) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: "string" },
      queues: { type: "string", default: "10" },
      "per-queue": { type: "string", default: "1" },
      jobs: { type: "string", default: "300" },
      concurrency: { type: "string", default: "10" },
      timeout: { type: "string", default: "300" },
      single: { type: "string", default: "2000" },
      bulk: { type: "string", default: "50000" },
      batch: { type: "string", default: "1000" },
      spacing: { type: "string", default: "0.02" },
      ...Object.fromEntries(
        Object.entries(extra).map(([k, v]) => [k, { type: "string", default: String(v) }]),
      ),
    },
  });
  const role = positionals[0];
  if (positionals.length !== 1 || !ROLES.includes(role)) {
    throw new Error(`one role expected, one of ${ROLES.join(", ")}; got ${positionals}`);
  }
  if (!values.url) throw new Error("--url is required");
  const args = { role, url: dsn(values.url) };
  for (const [key, value] of Object.entries(values)) {
    if (key === "url") continue;
    args[key.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = Number(value);
  }
  return args;
}

/** A libpq URL from the SQLAlchemy URL of benchdb.fresh_database (peers.dsn). */
export function dsn(url) {
  return url.replace(/^postgresql\+[a-z0-9_]+:\/\//, "postgresql://");
}

export function queueName(q) {
  return `${QUEUE_PREFIX}${q}`;
}

/** [queue, i] of every job in enqueue order: job 0 of every queue, then job 1, ... */
export function* interleaved(queues, perQueue) {
  for (let i = 0; i < perQueue; i++) {
    for (let q = 0; q < queues; q++) yield [queueName(q), i];
  }
}

/** [queue, i] of jobs 0..count-1, job i in queue i % queues. */
export function* spread(count, queues) {
  for (let i = 0; i < count; i++) yield [queueName(i % queues), i];
}

export function expectedInterleaved(queues, perQueue) {
  const out = {};
  for (let q = 0; q < queues; q++) out[queueName(q)] = [...Array(perQueue).keys()];
  return out;
}

export function expectedSpread(count, queues) {
  const out = {};
  for (const [queue, i] of spread(count, queues)) (out[queue] ??= []).push(i);
  return out;
}

/** Chunks of `size` of an array. */
export function* chunks(items, size) {
  for (let start = 0; start < items.length; start += size) yield items.slice(start, start + size);
}

export function emit(result) {
  process.stdout.write(RESULT_PREFIX + JSON.stringify(result) + "\n");
}

export function ready() {
  process.stdout.write(READY_LINE + "\n");
}

/** Wall-clock seconds, as Python's time.time() (sub-millisecond: timeOrigin + now()). */
export function wallClock() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Seconds since it was made (performance.now(), monotonic). */
export class Stopwatch {
  constructor() {
    this.started = performance.now();
  }
  elapsed() {
    return (performance.now() - this.started) / 1000;
  }
}

/** The order in which each queue's jobs were performed (workerio.OrderLog). */
export class OrderLog {
  constructor() {
    this.seen = {};
    this.count = 0;
  }
  record(queue, i) {
    (this.seen[queue] ??= []).push(i);
    this.count += 1;
    return this.count;
  }
  problems(expected, limit = 5) {
    const out = [];
    const queues = [...new Set([...Object.keys(expected), ...Object.keys(this.seen)])].sort();
    for (const queue of queues) {
      const want = expected[queue] ?? [];
      const got = this.seen[queue] ?? [];
      if (got.length === want.length && got.every((v, k) => v === want[k])) continue;
      let at = got.findIndex((v, k) => k < want.length && v !== want[k]);
      if (at < 0) at = Math.min(got.length, want.length);
      out.push(
        `queue ${queue}: ${got.length} performed, ${want.length} expected; first difference ` +
          `at position ${at}: got ${JSON.stringify(got.slice(at, at + 5))}, ` +
          `expected ${JSON.stringify(want.slice(at, at + 5))}`,
      );
      if (out.length >= limit) break;
    }
    return out;
  }
}

/** Performed jobs: the order log, start times, and a promise settled once `total` ran
 * (peers.Progress). */
export class Progress {
  constructor(total) {
    this.total = total;
    this.log = new OrderLog();
    this.started = {};
    this.allPerformed = new Promise((resolve) => {
      this.resolve = resolve;
    });
    if (total === 0) this.resolve();
  }
  performed(queue, i) {
    this.started[i] = wallClock();
    if (this.log.record(queue, i) >= this.total) this.resolve();
  }
  /** True once every job ran, false when `seconds` passed first. */
  async wait(seconds) {
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), Math.max(0, seconds) * 1000);
    });
    const done = await Promise.race([this.allPerformed.then(() => true), timeout]);
    clearTimeout(timer);
    return done;
  }
}

/** Poll `sql` (a count) on a connection of its own until it is 0 or the deadline
 * (performance.now() milliseconds); true if it reached 0 (peers.wait_recorded). */
export async function waitRecorded(url, sql, deadline) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    while (performance.now() < deadline) {
      const { rows } = await client.query(sql);
      if (Number(rows[0].count) === 0) return true;
      await sleep(RECORD_POLL_MS);
    }
    return false;
  } finally {
    await client.end();
  }
}

/** workerio.throughput_result: `seconds` null means it timed out after `elapsed` with
 * `done` jobs performed; `order` null means the order was not checked. */
export function throughputResult(total, seconds, order, { done = 0, elapsed = 0, ...extra } = {}) {
  const result = { jobs: total, ...extra };
  if (seconds === null) {
    result.error = "timeout";
    result.done = done;
    result.partial_rate = elapsed ? done / elapsed : 0;
    return result;
  }
  result.seconds = seconds;
  result.rate = total / seconds;
  if (order && order.length) result.error = "order violated: " + order.join("; ");
  result.order_checked = order !== null;
  return result;
}

/** The latency worker's result (peers.latency_result). */
export async function latencyResult(args, progress) {
  const result = {};
  if (!(await progress.wait(args.timeout))) {
    result.error = `timeout: ${progress.log.count}/${args.jobs} jobs performed`;
  } else {
    const order = progress.log.problems(expectedSpread(args.jobs, args.queues));
    if (order.length) result.error = "order violated: " + order.join("; ");
  }
  result.started = Object.fromEntries(
    Object.entries(progress.started).map(([i, t]) => [String(i), t]),
  );
  return result;
}

/** Create --jobs jobs one at a time, --spacing seconds apart (peers.produce). */
export async function produce(args, create) {
  const created = {};
  const start = performance.now();
  for (const [queue, i] of spread(args.jobs, args.queues)) {
    await sleep(Math.max(0, start + i * args.spacing * 1000 - performance.now()));
    created[String(i)] = wallClock();
    await create(queue, i);
  }
  return { created };
}

/** A logger's line on stderr (stdout carries the result line only). */
export function logError(...parts) {
  process.stderr.write(parts.map((p) => (p instanceof Error ? p.stack : String(p))).join(" ") + "\n");
}

/** Run `roles[args.role]`, print its result; exit (a library may keep timers alive). */
export async function main(roles, args) {
  try {
    const result = await roles[args.role](args);
    if (result !== undefined) emit(result);
    process.exit(0);
  } catch (err) {
    logError(err);
    process.exit(1);
  }
}
