//! Notifications sent after commit, not inside the change's transaction.
//!
//! A transaction that calls `pg_notify` takes a database-wide lock at
//! commit and holds it through its WAL flush, so notifying transactions
//! commit one at a time: concurrent enqueues (and completions on a sealed
//! queue) could not share a flush (group commit), which halved their rate
//! (`docs/STORE.md`, "Where the time goes"). So a change commits first;
//! then this replica's parked calls and watchers of the queue are woken at
//! once, and a `pg_notify` of its own (a transaction without writes: no
//! flush, the lock held a moment) tells the other replicas.
//!
//! Per queue, notifications coalesce: while one is being sent, any number
//! asked for meanwhile become one more, sent after it (so a change that
//! committed while one was in flight is always followed by a notification).
//!
//! If the replica dies between a commit and its notification, the other
//! replicas' parked calls look again within their safety poll (2 s) and
//! watchers within their poll (1 s): later, never wrong.

use super::{PgEngine, unavailable};
use crate::error::Result;
use crate::names::QueueName;
use std::sync::atomic::Ordering;

impl PgEngine {
    /// Wakes every replica's parked calls and watchers of `name`; call it
    /// after the change committed.
    pub(crate) fn notify_committed(&self, name: &QueueName) {
        let waker = self.waker(name);
        waker.changed.notify_waiters();
        waker.notify_again.store(true, Ordering::SeqCst);
        if waker.notifying.swap(true, Ordering::SeqCst) {
            // The sender in flight sends once more after it.
            return;
        }
        let (engine, name) = (self.clone(), name.clone());
        tokio::spawn(async move {
            loop {
                waker.notify_again.store(false, Ordering::SeqCst);
                if let Err(e) = engine.send_notification(&name).await {
                    tracing::debug!(queue = %name, "postgres store: notification not sent: {e}");
                }
                waker.notifying.store(false, Ordering::SeqCst);
                if !waker.notify_again.load(Ordering::SeqCst)
                    || waker.notifying.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }

    async fn send_notification(&self, name: &QueueName) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(unavailable)?;
        client
            .execute(&stmt, &[&super::listen::CHANNEL, &name.as_str()])
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
