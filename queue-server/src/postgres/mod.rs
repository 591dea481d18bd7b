//! The shared PostgreSQL engine (`--store postgres`): the database is the
//! state, and any number of queue-server replicas serve it at once. Every
//! call is one transaction (most are one statement); every time comes from
//! the database's clock. The design — schema, statements, counters, wake-ups,
//! reaping, in-doubt commits — is in `docs/STORE.md`.
//!
//! - [`migrate`]: the versioned schema;
//! - `listen`: the one LISTEN connection that wakes parked lease calls and
//!   watchers of this replica, and says whether the database is up;
//! - `notify`: notifications of other replicas, sent after commit;
//! - `combine`: concurrent calls on one queue grouped into one statement
//!   (`work`: completing and leasing; `enqueue_fast`: batches without
//!   idempotency keys);
//! - `queues`, `enqueue`, `lease`, `finish`, `dead`, `reap`: the calls.

use crate::error::{Error, Result};
use crate::names::{LeaseToken, QueueName};
use crate::settings::{Limits, QueueSettings};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

mod combine;
mod dead;
mod enqueue;
mod enqueue_fast;
mod finish;
mod judge;
mod lease;
mod listen;
pub mod migrate;
mod notify;
mod queues;
mod reap;
pub mod tls;
mod work;

pub use crate::engine::{EnqueueItem, LeaseOutcome, QueueInfo};

/// Counter stripes per queue: a change updates one at random.
const STRIPES: i16 = 16;

/// How often a parked lease call looks again even if no notification came
/// (a notification lost with a broken LISTEN connection).
const SAFETY_POLL: Duration = Duration::from_secs(2);

/// How a server reaches its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://user@host:port/db` (a password in it is honoured, but
    /// prefer [`PgConfig::password_file`] or `PGPASSWORD`).
    pub url: String,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Most connections in the pool (besides the one LISTEN connection).
    pub pool: usize,
    /// Most statements of one kind (work, enqueue) this replica runs on
    /// one queue at once; calls beyond them are grouped into the next
    /// (`combine`).
    pub statements_per_queue: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            url: String::new(),
            password_file: None,
            pool: 16,
            statements_per_queue: 4,
        }
    }
}

/// Why the postgres store could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse.
    #[error(
        "--database-url: {0}; expected postgres://USER@HOST:PORT/DATABASE (the password from \
         --database-password-file or PGPASSWORD)"
    )]
    Url(String),
    /// The password file could not be read.
    #[error("--database-password-file {path}: {message}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The database could not be reached or refused a statement.
    #[error(
        "the database could not be reached or refused the schema set-up: {0} (check \
         --database-url, that PostgreSQL runs, and the user's rights)"
    )]
    Connect(String),
    /// A migration failed.
    #[error("migrating the database schema to version {version} failed: {message}")]
    Migration {
        /// The version it migrated to.
        version: i32,
        /// Why.
        message: String,
    },
    /// TLS to the database could not be set up (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`).
    #[error(
        "TLS to the database: {0} (check sslrootcert/PGSSLROOTCERT, sslcert and sslkey, or \
         sslmode in --database-url)"
    )]
    Tls(String),
    /// The schema is newer than this build.
    #[error(
        "the database's workq schema is version {found}, newer than this queue-server knows \
         (version {known}): run the queue-server version that migrated it (or a newer one), \
         or point --database-url at another database"
    )]
    NewerSchema {
        /// What the database holds.
        found: i32,
        /// What this build knows.
        known: i32,
    },
}

impl PgError {
    /// `e` with its causes (tokio-postgres keeps a TLS failure's reason
    /// there).
    fn connect(e: impl std::error::Error) -> Self {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let more = c.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            cause = c.source();
        }
        PgError::Connect(text)
    }
}

/// A database error as a call's refusal: UNAVAILABLE, retry.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

/// What a replica keeps per queue: what wakes its parked lease calls and
/// its watchers, and the lines its calls are grouped in.
#[derive(Default)]
pub(crate) struct Waker {
    /// A notification for the queue came (items may be pending, it may
    /// have drained, been deleted, or changed).
    pub(crate) changed: Notify,
    /// Lease calls of this replica parked on it.
    pub(crate) waiting: AtomicUsize,
    /// Its watchers' channel, while someone watches.
    pub(crate) info: Mutex<Option<watch::Sender<Option<QueueInfo>>>>,
    /// A notification of the queue is being sent (`notify`).
    pub(crate) notifying: AtomicBool,
    /// Another was asked for meanwhile: send once more.
    pub(crate) notify_again: AtomicBool,
    /// Completions and leases waiting for their statement (`work`).
    pub(crate) work: work::WorkLine,
    /// Batches without idempotency keys waiting for theirs (`enqueue_fast`).
    pub(crate) enqueue: enqueue_fast::EnqueueLine,
}

struct Inner {
    pool: Pool,
    /// What every connection is made with (TLS per `sslmode`).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    limits: Limits,
    defaults: QueueSettings,
    wakers: Mutex<HashMap<QueueName, Arc<Waker>>>,
    stopping: AtomicBool,
    stopped: watch::Sender<bool>,
    /// Whether the LISTEN connection is up (health).
    up: watch::Sender<bool>,
    /// Wakes this replica's reaper early (a deadline sooner than it sleeps).
    reaper: Notify,
    /// [`PgConfig::statements_per_queue`].
    per_queue: usize,
}

/// The shared engine. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine").finish_non_exhaustive()
    }
}

/// A queue's row.
#[derive(Debug, Clone)]
pub(crate) struct QueueRow {
    pub(crate) id: i64,
    pub(crate) settings: QueueSettings,
    pub(crate) sealed: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn to_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The connection settings of `config`: the URL (its TLS settings taken
/// out, see [`tls`]), with the password from the file or `PGPASSWORD` when
/// the URL has none; and the connector that makes TLS as they say.
pub fn connection_config(
    config: &PgConfig,
) -> std::result::Result<
    (
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
    PgError,
> {
    let (url, tls) = tls::split_url(&config.url, |k| std::env::var(k).ok())?;
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    pg.ssl_mode(tls.ssl_mode());
    if let Some(path) = &config.password_file {
        let password = std::fs::read_to_string(path).map_err(|e| PgError::PasswordFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        pg.password(password.trim_end_matches(['\n', '\r']));
    } else if pg.get_password().is_none()
        && let Ok(p) = std::env::var("PGPASSWORD")
    {
        pg.password(p);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("queue-server");
    }
    pg.connect_timeout(Duration::from_secs(5));
    Ok((pg, tls.connector()?))
}

impl PgEngine {
    /// Connects, migrates the schema (one replica at a time) and starts the
    /// LISTEN connection and the reaper. Must be called inside a tokio
    /// runtime.
    pub async fn open(
        config: &PgConfig,
        limits: Limits,
        defaults: QueueSettings,
    ) -> std::result::Result<Self, PgError> {
        limits.check().map_err(PgError::Connect)?;
        let (pg, tls) = connection_config(config)?;
        {
            let (mut client, conn) = pg.connect(tls.clone()).await.map_err(PgError::connect)?;
            let task = tokio::spawn(conn);
            let out = migrate::migrate(&mut client).await;
            drop(client);
            let _ = task.await;
            out?;
        }
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool.max(1))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(PgError::connect)?;
        let engine = PgEngine {
            inner: Arc::new(Inner {
                pool,
                tls,
                limits,
                defaults,
                wakers: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
                stopped: watch::Sender::new(false),
                up: watch::Sender::new(false),
                reaper: Notify::new(),
                per_queue: config.statements_per_queue.max(1),
            }),
        };
        listen::start(&engine, pg).await?;
        reap::start(&engine);
        Ok(engine)
    }

    /// The limits calls are checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The settings a new queue gets for fields it leaves unset.
    pub fn default_settings(&self) -> &QueueSettings {
        &self.inner.defaults
    }

    /// A connection of the pool (calls in flight at shutdown still get
    /// one: the pool closes after the last call answered).
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.inner.pool.get().await.map_err(unavailable)
    }

    pub(crate) fn waker(&self, name: &QueueName) -> Arc<Waker> {
        let mut wakers = self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner());
        // Every call looks its queue up: the name is copied only the first
        // time.
        if let Some(w) = wakers.get(name) {
            return w.clone();
        }
        wakers.entry(name.clone()).or_default().clone()
    }

    /// Wakes this replica's parked calls and watchers of `name` (a
    /// notification came).
    pub(crate) fn wake(&self, name: &str) {
        let Ok(name) = name.parse::<QueueName>() else {
            return;
        };
        let waker = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned();
        if let Some(w) = waker {
            w.changed.notify_waiters();
        }
    }

    /// Wakes every parked call and watcher (the LISTEN connection came back:
    /// notifications may have been lost; or the server is stopping).
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<_> = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for w in wakers {
            w.changed.notify_waiters();
        }
    }

    /// Lease calls on `name` parked in this replica.
    pub fn waiting_leases(&self, name: &QueueName) -> Result<usize> {
        Ok(self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |w| w.waiting.load(Ordering::Relaxed)))
    }

    /// Items are in the database, not in memory: zero.
    pub fn queued_bytes(&self) -> u64 {
        0
    }

    /// Finished leases and enqueue request ids remembered for retries, as
    /// the local engine counts them (a request: 1 plus 1 per item); 0 when
    /// the database cannot say.
    pub async fn remembered(&self) -> u64 {
        let Ok(client) = self.client().await else {
            return 0;
        };
        client
            .query_one(
                "SELECT (SELECT count(*) FROM workq_finished) + \
                 (SELECT coalesce(sum(cardinality(items)), 0) FROM workq_completed) + \
                 (SELECT coalesce(sum(1 + cardinality(ids)), 0) FROM workq_requests)::int8",
                &[],
            )
            .await
            .ok()
            .and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok())
            .unwrap_or(0)
    }

    /// Makes parked lease calls answer at once, now and from now on.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        self.inner.stopped.send_replace(true);
        self.wake_all();
        self.inner.reaper.notify_one();
    }

    /// Whether [`PgEngine::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Resolves once [`PgEngine::begin_shutdown`] has been called.
    pub async fn stopping(&self) {
        let mut rx = self.inner.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the database is reachable (its LISTEN connection is up).
    pub fn health(&self) -> std::result::Result<(), String> {
        if *self.inner.up.borrow() {
            Ok(())
        } else {
            Err("the database is unreachable".to_string())
        }
    }

    /// Resolves when [`PgEngine::health`] may have changed.
    pub async fn health_changed(&self) {
        // Stopping does not come back: nothing changes after it.
        if self.is_stopping() {
            std::future::pending::<()>().await;
        }
        let mut rx = self.inner.up.subscribe();
        rx.borrow_and_update();
        tokio::select! {
            _ = rx.changed() => {}
            () = self.stopping() => {}
        }
    }

    /// Stops background work and closes the pool.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        self.inner.pool.close();
        Ok(())
    }

    /// The queue's row, or [`Error::QueueNotFound`].
    pub(crate) async fn queue_row(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        name: &QueueName,
        lock: &str,
    ) -> Result<QueueRow> {
        let sql = format!(
            "SELECT id, default_lease_ms, max_attempts, retry_backoff_ms, retry_backoff_max_ms, \
             sealed FROM workq_queues WHERE name = $1 {lock}"
        );
        let stmt = client.prepare_cached(&sql).await.map_err(unavailable)?;
        let row = client
            .query_opt(&stmt, &[&name.as_str()])
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::QueueNotFound(name.clone()))?;
        Ok(QueueRow {
            id: row.get(0),
            settings: QueueSettings {
                default_lease: to_duration(row.get(1)),
                max_attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(1),
                retry_backoff: to_duration(row.get(3)),
                retry_backoff_max: to_duration(row.get(4)),
            },
            sealed: row.get(5),
        })
    }
}

/// A random counter stripe.
pub(crate) fn stripe() -> i16 {
    fastrand::i16(0..STRIPES)
}

/// The random parts of `n` new leases (128 bits each, from the operating
/// system's generator).
pub(crate) fn secrets(n: usize) -> Result<Vec<Vec<u8>>> {
    use ring::rand::SecureRandom;
    let mut all = vec![0u8; n * crate::names::SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut all)
        .map_err(|_| unavailable("the system's random generator failed"))?;
    Ok(all
        .chunks(crate::names::SECRET_BYTES)
        .map(<[u8]>::to_vec)
        .collect())
}

/// The token of lease `seq` of item `id` with `secret`.
pub(crate) fn token(id: i64, seq: i64, secret: &[u8]) -> LeaseToken {
    let mut s = [0u8; crate::names::SECRET_BYTES];
    let n = secret.len().min(s.len());
    s[..n].copy_from_slice(&secret[..n]);
    LeaseToken {
        item: crate::names::ItemId(u64::try_from(id).unwrap_or(0)),
        seq: u64::try_from(seq).unwrap_or(0),
        secret: s,
    }
}

/// The database id of an item id.
pub(crate) fn db_id(id: crate::names::ItemId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

/// Attributes as the `attrs` column keeps them (JSON pairs; NULL: none).
pub(crate) fn attrs_text(a: &[(String, String)]) -> Option<String> {
    if a.is_empty() {
        None
    } else {
        serde_json::to_string(a).ok()
    }
}

/// The `attrs` column read back.
pub(crate) fn attrs_of(s: Option<String>) -> crate::item::Attributes {
    let pairs: Vec<(String, String)> = s
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    crate::item::Attributes::new(pairs)
}
