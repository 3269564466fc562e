// pg-boss's side of bench/compare.py (pg-boss 12.38.1, the version pinned in package.json).
//
//   node pgboss.mjs throughput --url URL --queues Q --per-queue N [--concurrency 10]
//                   [--batch-size 10] [--poll-interval 0.5] [--timeout 300]
//   node pgboss.mjs enqueue --url URL [--single 2000] [--bulk 50000] [--batch 1000]
//   node pgboss.mjs latency-worker|latency-producer --url URL --jobs 300 --queues 10
//   node pgboss.mjs install|prepare --url URL [--queues Q --per-queue N]   (untimed set-up)
//
// All the jobs go to one pg-boss queue, QUEUE, created with policy `key_strict_fifo` and
// `notify: true`; our queue q is the job's `singletonKey`. key_strict_fifo runs a key's
// jobs one at a time in creation order (created_on, then id): a fetch only takes the head
// of each key, and a key whose head is active, in retry or failed is skipped
// (node_modules/pg-boss/dist/types.d.ts `QueuePolicy`, dist/plans.js `fetchNextJob`).
//
// The worker is one PgBoss instance (`useListenNotify: true`, a pool of concurrency + 2
// connections) with `work(QUEUE, {localConcurrency: concurrency, batchSize,
// pollingIntervalSeconds, notifyPollingIntervalSeconds: the same, burstWhenBatchFull:
// true})` (types.d.ts `WorkOptions`, dist/manager.js `work`): `concurrency` fetch loops,
// each taking up to `batchSize` key heads a fetch, running the handler on the batch and
// completing the batch in one statement; a loop fetches again at once while its fetches
// come back full (burst), on a NOTIFY (a job created), else after the polling interval
// (0.5 s: the least pg-boss accepts, POLICY.MIN_POLLING_INTERVAL_MS). Completing a job
// wakes no one: a key's next job waits for a loop's next fetch, so a single busy key
// runs a few jobs a polling interval (its fetches come back short: no burst).
//
// Jobs created by one `insert()` share created_on (job_now()), and pg-boss breaks the tie
// by job id (a random uuid unless given): the bulk paths (pre-enqueue, bulk enqueue) give
// every job an id that grows in enqueue order (orderedId), which `insert()` accepts
// (`JobInsert.id`), so a key's jobs of one call still run in enqueue order. (Without
// them, 10 keys x 30 jobs inserted in one call ran key q0 as 17, 5, 10, 3, 21, ...)

import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { PgBoss } from "pg-boss";
import {
  PREPARE_BATCH,
  Progress,
  Stopwatch,
  chunks,
  expectedInterleaved,
  interleaved,
  latencyResult,
  logError,
  main,
  parseCommandLine,
  produce,
  ready,
  spread,
  throughputResult,
  waitRecorded,
} from "./common.mjs";

const QUEUE = "bench";
const SCHEMA = "pgboss";

/** A PgBoss instance that only creates jobs (set-up and producers): no maintenance,
 * no cron, no migration beyond the set-up's. */
function producerBoss(args, extra = {}) {
  const boss = new PgBoss({
    connectionString: args.url,
    schema: SCHEMA,
    supervise: false,
    schedule: false,
    max: 2,
    ...extra,
  });
  boss.on("error", (err) => logError("pg-boss error:", err));
  boss.on("warning", (w) => logError("pg-boss warning:", JSON.stringify(w)));
  return boss;
}

/** A worker's PgBoss instance: pg-boss's defaults (maintenance, cron monitor, instance
 * registry) plus LISTEN/NOTIFY wake-ups. */
function workerBoss(args) {
  const boss = new PgBoss({
    connectionString: args.url,
    schema: SCHEMA,
    useListenNotify: true,
    max: args.concurrency + 2,
  });
  boss.on("error", (err) => logError("pg-boss error:", err));
  boss.on("warning", (w) => logError("pg-boss warning:", JSON.stringify(w)));
  return boss;
}

function workOptions(args) {
  return {
    localConcurrency: args.concurrency,
    batchSize: args.batchSize,
    pollingIntervalSeconds: args.pollInterval,
    notifyPollingIntervalSeconds: args.pollInterval,
    burstWhenBatchFull: true,
  };
}

async function work(boss, args, progress) {
  await boss.work(QUEUE, workOptions(args), async (jobs) => {
    for (const job of jobs) progress.performed(job.data.q, job.data.i);
  });
}

/** Job ids that grow in the order they are made: uuid-shaped, a random per-process
 * prefix then a counter (PostgreSQL compares uuids byte by byte). */
const idPrefix = randomBytes(4).toString("hex");
let idCounter = 0n;
function orderedId() {
  const hex = (idCounter++).toString(16).padStart(24, "0");
  return `${idPrefix}-${hex.slice(0, 4)}-${hex.slice(4, 8)}-${hex.slice(8, 12)}-${hex.slice(12)}`;
}

function insertJob(queue, i) {
  return { id: orderedId(), data: { q: queue, i }, singletonKey: queue };
}

// -- set-up (untimed) ------------------------------------------------------------------

async function install(args) {
  // start() installs the schema in a fresh database (migrate/createSchema default true).
  const boss = producerBoss(args);
  await boss.start();
  await boss.createQueue(QUEUE, { policy: "key_strict_fifo", notify: true });
  await boss.stop({ graceful: false });
  return { installed: true };
}

async function prepare(args) {
  await install(args);
  const boss = producerBoss(args, { migrate: false });
  await boss.start();
  const items = [...interleaved(args.queues, args.perQueue)];
  for (const chunk of chunks(items, PREPARE_BATCH)) {
    await boss.insert(
      QUEUE,
      chunk.map(([q, i]) => insertJob(q, i)),
    );
  }
  await boss.stop({ graceful: false });
  return { prepared: items.length };
}

// -- measured roles --------------------------------------------------------------------

async function throughput(args) {
  const total = args.queues * args.perQueue;
  const progress = new Progress(total);
  const watch = new Stopwatch();
  const deadline = performance.now() + args.timeout * 1000;
  const boss = workerBoss(args);
  await boss.start();
  await work(boss, args, progress);
  let recorded = false;
  if (await progress.wait((deadline - performance.now()) / 1000)) {
    recorded = await waitRecorded(
      args.url,
      `SELECT count(*) FROM ${SCHEMA}.job WHERE name = '${QUEUE}' AND state < 'completed'`,
      deadline,
    );
  }
  const seconds = recorded ? watch.elapsed() : null;
  const elapsed = watch.elapsed();
  const done = progress.log.count;
  await boss.stop({ graceful: false, timeout: 5000 });
  const settings = {
    batch_size: args.batchSize,
    local_concurrency: args.concurrency,
    poll_interval: args.pollInterval,
  };
  if (seconds === null) return throughputResult(total, null, null, { done, elapsed, ...settings });
  const order = progress.log.problems(expectedInterleaved(args.queues, args.perQueue));
  return throughputResult(total, seconds, order, settings);
}

async function enqueue(args) {
  const boss = producerBoss(args, { migrate: false });
  await boss.start();
  const send = (queue, i) => boss.send(QUEUE, { q: queue, i }, { singletonKey: queue });
  for (const [queue, i] of spread(10, args.queues)) await send(queue, i);
  let watch = new Stopwatch();
  for (const [queue, i] of spread(args.single, args.queues)) await send(queue, i);
  const single = watch.elapsed();
  const items = [...spread(args.bulk, args.queues)];
  watch = new Stopwatch();
  for (const chunk of chunks(items, args.batch)) {
    await boss.insert(
      QUEUE,
      chunk.map(([q, i]) => insertJob(q, i)),
    );
  }
  const bulk = watch.elapsed();
  await boss.stop({ graceful: false });
  return {
    single_rate: args.single / single,
    bulk_rate: args.bulk / bulk,
    single_api: "send(queue, data, {singletonKey})",
    bulk_api: `insert(queue, jobs), ${args.batch} a call, ids in enqueue order`,
  };
}

async function latencyWorker(args) {
  const progress = new Progress(args.jobs);
  const boss = workerBoss(args);
  await boss.start();
  await work(boss, args, progress);
  await new Promise((resolve) => setTimeout(resolve, 500));
  ready();
  const result = await latencyResult(args, progress);
  await boss.stop({ graceful: false, timeout: 5000 });
  return result;
}

async function latencyProducer(args) {
  const boss = producerBoss(args, { migrate: false });
  await boss.start();
  await boss.getQueue(QUEUE); // a first round trip: the pool's connection is open
  const created = await produce(args, (queue, i) =>
    boss.send(QUEUE, { q: queue, i }, { singletonKey: queue }),
  );
  await boss.stop({ graceful: false });
  return created;
}

const args = parseCommandLine({ "batch-size": 10, "poll-interval": 0.5 });
await main(
  {
    install,
    prepare,
    throughput,
    enqueue,
    "latency-worker": latencyWorker,
    "latency-producer": latencyProducer,
  },
  args,
);
