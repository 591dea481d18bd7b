// graphile-worker on PostgreSQL, driven as its users do, for workq-bench:
// enqueue N jobs with addJobs in batches, then let a runner process them
// with a task that does nothing. Prints one JSON line of timings.
//
//   node graphile.mjs URL N BATCH CONCURRENCY PAYLOAD_BYTES MODE
//
// MODE "batched": localQueue of 500 and batched completions (the fast mode
// its docs describe); "default": one job per fetch.
import { Logger, makeWorkerUtils, run } from "graphile-worker";

// Quiet: a line per job would cost more than the job.
const logger = new Logger(() => () => {});

const [url, n, batch, concurrency, payloadBytes, mode] = process.argv.slice(2);
const total = Number(n);
const size = Number(batch);
const payload = { data: "x".repeat(Number(payloadBytes)) };

const utils = await makeWorkerUtils({ connectionString: url, logger });
await utils.migrate();
const t0 = process.hrtime.bigint();
for (let i = 0; i < total; i += size) {
  const specs = [];
  for (let j = i; j < Math.min(total, i + size); j++) {
    specs.push({ identifier: "bench", payload });
  }
  await utils.addJobs(specs);
}
const t1 = process.hrtime.bigint();

let done = 0;
let finished;
const allDone = new Promise((resolve) => (finished = resolve));
const preset =
  mode === "batched"
    ? {
        worker: {
          localQueue: { size: 500 },
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
        },
      }
    : {};
const runner = await run({
  connectionString: url,
  concurrency: Number(concurrency),
  noHandleSignals: true,
  pollInterval: 100,
  preset,
  logger,
  taskList: {
    bench: async () => {
      done += 1;
      if (done === total) finished();
    },
  },
});
await allDone;
// Completions may still be batched in memory: stop waits for them.
await runner.stop();
const t2 = process.hrtime.bigint();
await utils.release();
console.log(
  JSON.stringify({
    enqueue_s: Number(t1 - t0) / 1e9,
    process_s: Number(t2 - t1) / 1e9,
    items: total,
  }),
);
