//! The schema, created and migrated at start by versioned migrations, one
//! replica at a time (`pg_advisory_lock`); a database whose schema is newer
//! than this build knows is refused.
//!
//! Every time is milliseconds since the Unix epoch of the database's clock
//! (`workq_ms()`, from `now()`): replicas never compare their own clocks.

use super::PgError;
use tokio_postgres::Client;

/// The advisory lock key migrations hold ("workq" in ASCII).
const LOCK_KEY: i64 = 0x0077_6f72_6b71;

/// Every migration, in order; the schema's version is how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: queues, items, idempotency keys, finished leases, request ids and
    //    striped counters.
    r#"
CREATE FUNCTION workq_ms() RETURNS int8 LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM now()) * 1000)::int8 $$;

-- Item ids, and the order of pending items (rank: pushed to the back with a
-- new positive value, to the front with a new negative one).
CREATE SEQUENCE workq_item_id;

CREATE TABLE workq_queues (
    id bigserial PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    default_lease_ms int8 NOT NULL,
    max_attempts int4 NOT NULL,
    retry_backoff_ms int8 NOT NULL,
    retry_backoff_max_ms int8 NOT NULL,
    sealed bool NOT NULL DEFAULT false
);

-- state: 'p' pending, 'd' delayed (due_at), 'l' leased (due_at: the
-- deadline; seq and secret: the lease), 'x' dead.
CREATE TABLE workq_items (
    queue_id int8 NOT NULL REFERENCES workq_queues ON DELETE CASCADE,
    id int8 NOT NULL,
    state "char" NOT NULL,
    rank int8 NOT NULL,
    due_at int8,
    seq int8 NOT NULL DEFAULT 0,
    secret bytea,
    attempts int4 NOT NULL DEFAULT 0,
    enqueued_at int8 NOT NULL,
    size int4 NOT NULL,
    payload bytea NOT NULL,
    attrs text,
    idem_key text,
    reason text,
    died_at int8,
    PRIMARY KEY (queue_id, id)
);
CREATE INDEX workq_items_ready ON workq_items (queue_id, rank) WHERE state = 'p';
CREATE INDEX workq_items_due ON workq_items (due_at) WHERE state IN ('d', 'l');
CREATE INDEX workq_items_dead ON workq_items (queue_id, id) WHERE state = 'x';

-- Idempotency keys: of a live item (expires_at NULL) or of one completed
-- (until expires_at).
CREATE TABLE workq_keys (
    queue_id int8 NOT NULL REFERENCES workq_queues ON DELETE CASCADE,
    key text NOT NULL,
    item int8 NOT NULL,
    expires_at int8,
    PRIMARY KEY (queue_id, key)
);
CREATE INDEX workq_keys_expiry ON workq_keys (expires_at) WHERE expires_at IS NOT NULL;

-- How each item's last lease finished, for the idempotency window: a retried
-- finish (one whose COMMIT was in doubt) is answered "already done".
-- how: 'c' completed, 'f' failed, 'r' released.
CREATE TABLE workq_finished (
    queue_id int8 NOT NULL REFERENCES workq_queues ON DELETE CASCADE,
    item int8 NOT NULL,
    seq int8 NOT NULL,
    secret bytea NOT NULL,
    how "char" NOT NULL,
    dead bool NOT NULL,
    at int8 NOT NULL,
    PRIMARY KEY (queue_id, item)
);
CREATE INDEX workq_finished_at ON workq_finished (at);

-- Enqueue calls named by a request id, for the idempotency window.
CREATE TABLE workq_requests (
    queue_id int8 NOT NULL REFERENCES workq_queues ON DELETE CASCADE,
    request_id text NOT NULL,
    ids int8[] NOT NULL,
    duplicates bool[] NOT NULL,
    at int8 NOT NULL,
    PRIMARY KEY (queue_id, request_id)
);
CREATE INDEX workq_requests_at ON workq_requests (at);

-- Exact counters, striped: each change updates one stripe in the same
-- transaction; a read sums the stripes in one snapshot.
CREATE TABLE workq_counters (
    queue_id int8 NOT NULL REFERENCES workq_queues ON DELETE CASCADE,
    stripe int2 NOT NULL,
    enqueued int8 NOT NULL DEFAULT 0,
    pending int8 NOT NULL DEFAULT 0,
    delayed int8 NOT NULL DEFAULT 0,
    leased int8 NOT NULL DEFAULT 0,
    completed int8 NOT NULL DEFAULT 0,
    dead int8 NOT NULL DEFAULT 0,
    retried int8 NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, stripe)
);
"#,
    // 2: the bytes of items held, per counter stripe, for
    //    --max-queued-bytes: an item counts its answer size (`size`) plus
    //    its idempotency key. Items and finish records lose their foreign
    //    key to the queue: its check ran per row (a third of an enqueue's
    //    and a fifth of a completion's statement time, and a share lock on
    //    the queue's row per item); deleting a queue deletes them itself,
    //    and every statement that adds them holds or reads the queue's row.
    //    Completions by the one-statement path are recorded one row per
    //    call (`workq_completed`: the items' ids, epochs and secrets as
    //    arrays, found by the range of ids), not one row per item.
    r#"
CREATE TABLE workq_completed (
    queue_id int8 NOT NULL,
    lo int8 NOT NULL,
    hi int8 NOT NULL,
    items int8[] NOT NULL,
    seqs int8[] NOT NULL,
    secrets bytea[] NOT NULL,
    at int8 NOT NULL
);
CREATE INDEX workq_completed_ids ON workq_completed USING gist (int8range(lo, hi, '[]'));
CREATE INDEX workq_completed_at ON workq_completed (at);
ALTER TABLE workq_items DROP CONSTRAINT workq_items_queue_id_fkey;
ALTER TABLE workq_finished DROP CONSTRAINT workq_finished_queue_id_fkey;
ALTER TABLE workq_counters ADD COLUMN bytes int8 NOT NULL DEFAULT 0;
UPDATE workq_counters c SET bytes = s.b
    FROM (SELECT queue_id, sum(size + coalesce(octet_length(idem_key), 0))::int8 AS b
          FROM workq_items GROUP BY queue_id) s
    WHERE c.queue_id = s.queue_id AND c.stripe = 0;
"#,
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema up to [`SCHEMA_VERSION`], holding the migration lock;
/// refuses a newer schema. Returns the version found before.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(PgError::connect)?;
    let out = migrate_locked(client).await;
    // Released on every path; a lost connection releases it anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    out
}

async fn migrate_locked(client: &mut Client) -> Result<i32, PgError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS workq_schema (version int4 NOT NULL)")
        .await
        .map_err(PgError::connect)?;
    let found: i32 = client
        .query_opt("SELECT max(version) FROM workq_schema", &[])
        .await
        .map_err(PgError::connect)?
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        let tx = client.transaction().await.map_err(PgError::connect)?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::Migration {
                version,
                message: e.to_string(),
            })?;
        tx.execute("DELETE FROM workq_schema", &[])
            .await
            .map_err(PgError::connect)?;
        tx.execute("INSERT INTO workq_schema VALUES ($1)", &[&version])
            .await
            .map_err(PgError::connect)?;
        tx.commit().await.map_err(PgError::connect)?;
        tracing::info!(version, "postgres store: schema migrated");
    }
    Ok(found)
}
