// graphile-worker's side of bench/compare.py (graphile-worker 0.18.0, the version pinned
// in package.json).
//
//   node graphile.mjs throughput --url URL --queues Q --per-queue N [--concurrency 10]
//                    [--poll-interval 0.5] [--local-queue-size 11]
//                    [--complete-batch-delay 0] [--timeout 300]
//   node graphile.mjs enqueue --url URL [--single 2000] [--bulk 50000] [--batch 1000]
//   node graphile.mjs latency-worker|latency-producer --url URL --jobs 300 --queues 10
//   node graphile.mjs install|prepare --url URL [--queues Q --per-queue N]  (untimed set-up)
//
// Every job is a job of task TASK with `queueName` = our queue. graphile-worker runs the
// jobs of a named queue one at a time: taking a job locks its queue's row until the job
// is completed or failed, and a fetch takes at most one job of a queue, the first by
// (priority, run_at) (node_modules/graphile-worker/dist/interfaces.d.ts `TaskSpec`,
// dist/sql/getJobs.js, dist/sql/completeJobs.js). A completed job is deleted.
//
// The worker is `run()` with `concurrentJobs` = --concurrency, `maxPoolSize`
// concurrency + 2 (the docs' advice: "10 or concurrentJobs + 2, whichever is larger"),
// `localQueue.size` (batched fetch: the pool fetches and locks that many jobs at once and
// hands them to its workers; default concurrency + 1, the docs' "good starting point"),
// `completeJobBatchDelay` (batched completion: completions within that many ms go in one
// statement; default 0, batching the completions of one tick, the docs' "even setting
// this to 0 can be impactful"), and `pollInterval` --poll-interval seconds (default
// 0.5 s, the same floor as pg-boss's least polling interval; graphile-worker's own
// default is 2 s) beside its LISTEN/NOTIFY wake-up on new jobs, always on
// (dist/index.d.ts `GraphileConfig.WorkerOptions`, worker.graphile.org/docs/performance).
// A named queue's next job waits for a poll: completing a job unlocks its queue but
// wakes no one (dist/sql/completeJobs.js), so a single busy queue runs about one job a
// poll. Success log lines are off (NO_LOG_SUCCESS=1, read by dist/worker.js).
//
// Jobs of one `addJobs()` call share run_at (now()), and graphile-worker orders a named
// queue's jobs by (priority, run_at) with no further tie-break: in a small table (sorted
// rather than read in index order) a queue's jobs 0, 1, 2 of one call ran as 1, 2, 0. So
// the bulk paths (pre-enqueue, bulk enqueue) give the k-th job of the process `runAt` =
// base + k ms, base being `count` ms before the first call (`AddJobsJobSpec.runAt`): in
// enqueue order, every job due at once. (In the enqueue measurement, whose jobs never
// run, this puts the bulk jobs before the single ones; the call costs the same.)

import { performance } from "node:perf_hooks";
import {
  PREPARE_BATCH,
  Progress,
  Stopwatch,
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

// graphile-worker reads NO_LOG_SUCCESS as it loads: imported once it is set.
process.env.NO_LOG_SUCCESS ??= "1";
const { Logger, makeWorkerUtils, run, runMigrations } = await import("graphile-worker");

const TASK = "noop";
const SCHEMA = "graphile_worker";

// Its warnings and errors go to stderr (stdout carries the result line); its info lines
// (one a job: "Completed task ...") and debug lines are dropped.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") logError(`graphile-worker ${level}: ${message}`);
});

function workerPreset(args) {
  return {
    worker: {
      connectionString: args.url,
      schema: SCHEMA,
      concurrentJobs: args.concurrency,
      maxPoolSize: Math.max(10, args.concurrency + 2),
      pollInterval: args.pollInterval * 1000,
      localQueue: { size: args.localQueueSize || args.concurrency + 1 },
      completeJobBatchDelay: args.completeBatchDelay,
      logger,
    },
  };
}

async function startWorker(args, progress) {
  return run({
    preset: workerPreset(args),
    noHandleSignals: true,
    parsedCronItems: [],
    taskList: {
      [TASK]: async (payload) => {
        progress.performed(payload.q, payload.i);
      },
    },
  });
}

function utils(args) {
  return makeWorkerUtils({ connectionString: args.url, schema: SCHEMA, logger });
}

function spec(queue, i, runAt) {
  return { identifier: TASK, payload: { q: queue, i }, queueName: queue, runAt };
}

/** runAt of the k-th of `count` jobs added in bulk: 1 ms apart, the last one due now. */
function orderedRunAt(count) {
  const base = Date.now() - count;
  return (k) => new Date(base + k);
}

/** addJobs of [queue, i] items, `size` a call, in enqueue order (orderedRunAt). */
async function addInBulk(workerUtils, items, size) {
  const runAt = orderedRunAt(items.length);
  for (let start = 0; start < items.length; start += size) {
    const chunk = items.slice(start, start + size);
    await workerUtils.addJobs(chunk.map(([q, i], k) => spec(q, i, runAt(start + k))));
  }
}

// -- set-up (untimed) ------------------------------------------------------------------

async function install(args) {
  await runMigrations({ connectionString: args.url, schema: SCHEMA, logger });
  return { installed: true };
}

async function prepare(args) {
  await install(args);
  const workerUtils = await utils(args);
  const items = [...interleaved(args.queues, args.perQueue)];
  await addInBulk(workerUtils, items, PREPARE_BATCH);
  await workerUtils.release();
  return { prepared: items.length };
}

// -- measured roles --------------------------------------------------------------------

async function throughput(args) {
  const total = args.queues * args.perQueue;
  const progress = new Progress(total);
  const watch = new Stopwatch();
  const deadline = performance.now() + args.timeout * 1000;
  const runner = await startWorker(args, progress);
  let recorded = false;
  if (await progress.wait((deadline - performance.now()) / 1000)) {
    recorded = await waitRecorded(
      args.url,
      `SELECT count(*) FROM ${SCHEMA}._private_jobs`,
      deadline,
    );
  }
  const seconds = recorded ? watch.elapsed() : null;
  const elapsed = watch.elapsed();
  const done = progress.log.count;
  await runner.stop();
  const settings = {
    concurrency: args.concurrency,
    local_queue_size: workerPreset(args).worker.localQueue.size,
    complete_job_batch_delay: args.completeBatchDelay,
    poll_interval: args.pollInterval,
  };
  if (seconds === null) return throughputResult(total, null, null, { done, elapsed, ...settings });
  const order = progress.log.problems(expectedInterleaved(args.queues, args.perQueue));
  return throughputResult(total, seconds, order, settings);
}

async function enqueue(args) {
  const workerUtils = await utils(args);
  const add = (queue, i) => workerUtils.addJob(TASK, { q: queue, i }, { queueName: queue });
  for (const [queue, i] of spread(10, args.queues)) await add(queue, i);
  let watch = new Stopwatch();
  for (const [queue, i] of spread(args.single, args.queues)) await add(queue, i);
  const single = watch.elapsed();
  const items = [...spread(args.bulk, args.queues)];
  watch = new Stopwatch();
  await addInBulk(workerUtils, items, args.batch);
  const bulk = watch.elapsed();
  await workerUtils.release();
  return {
    single_rate: args.single / single,
    bulk_rate: args.bulk / bulk,
    single_api: "WorkerUtils.addJob(task, payload, {queueName})",
    bulk_api: `WorkerUtils.addJobs(specs), ${args.batch} a call, runAt in enqueue order`,
  };
}

async function latencyWorker(args) {
  const progress = new Progress(args.jobs);
  const runner = await startWorker(args, progress);
  await new Promise((resolve) => setTimeout(resolve, 500));
  ready();
  const result = await latencyResult(args, progress);
  await runner.stop();
  return result;
}

async function latencyProducer(args) {
  const workerUtils = await utils(args);
  await workerUtils.withPgClient((client) => client.query("SELECT 1")); // open the pool
  const created = await produce(args, (queue, i) =>
    workerUtils.addJob(TASK, { q: queue, i }, { queueName: queue }),
  );
  await workerUtils.release();
  return created;
}

const args = parseCommandLine({
  "poll-interval": 0.5,
  "local-queue-size": 0,
  "complete-batch-delay": 0,
});
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
