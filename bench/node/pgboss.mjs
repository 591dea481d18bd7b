// pg-boss on PostgreSQL, driven as its users do, for workq-bench: insert N
// jobs in batches, then CONCURRENCY loops fetch up to BATCH jobs and complete
// them by id. Prints one JSON line of timings.
//
//   node pgboss.mjs URL N BATCH CONCURRENCY PAYLOAD_BYTES
import { PgBoss } from "pg-boss";

const [url, n, batch, concurrency, payloadBytes] = process.argv.slice(2);
const total = Number(n);
const size = Number(batch);
const data = { data: "x".repeat(Number(payloadBytes)) };
const queue = "bench";

const boss = new PgBoss({ connectionString: url, max: Number(concurrency) + 2, supervise: false, schedule: false });
boss.on("error", (e) => console.error(e));
await boss.start();
await boss.createQueue(queue);
const t0 = process.hrtime.bigint();
for (let i = 0; i < total; i += size) {
  const jobs = [];
  for (let j = i; j < Math.min(total, i + size); j++) jobs.push({ data });
  await boss.insert(queue, jobs);
}
const t1 = process.hrtime.bigint();
let done = 0;
async function worker() {
  while (done < total) {
    const jobs = await boss.fetch(queue, { batchSize: size });
    if (jobs.length === 0) {
      if (done >= total) break;
      continue;
    }
    await boss.complete(queue, jobs.map((j) => j.id));
    done += jobs.length;
  }
}
await Promise.all(Array.from({ length: Number(concurrency) }, worker));
const t2 = process.hrtime.bigint();
await boss.stop({ graceful: false, wait: false });
console.log(
  JSON.stringify({
    enqueue_s: Number(t1 - t0) / 1e9,
    process_s: Number(t2 - t1) / 1e9,
    items: total,
  }),
);
