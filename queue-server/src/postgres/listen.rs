//! The one LISTEN connection of a replica: every transaction that makes
//! items available (or drains, deletes or changes a queue) sends
//! `pg_notify('workq', <queue>)`; this connection hears it and wakes the
//! queue's parked lease calls and watchers in this replica. Notifications
//! are coalesced per queue twice: PostgreSQL folds identical ones of a
//! transaction, and a woken queue's calls each look once, however many came.
//!
//! The connection's state is the replica's health: while it is down the
//! replica reports NOT_SERVING, and it reconnects every [`RETRY`]; when it
//! is back every parked call looks again (notifications may have been lost).

use super::{PgEngine, PgError};
use futures::StreamExt;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// The channel.
pub(crate) const CHANNEL: &str = "workq";

/// How long between reconnection attempts.
const RETRY: Duration = Duration::from_millis(500);

/// Connects the LISTEN connection (failing if the database is unreachable)
/// and keeps it up in the background.
pub(super) async fn start(
    engine: &PgEngine,
    config: tokio_postgres::Config,
) -> Result<(), PgError> {
    let first = connect(engine, &config).await.map_err(PgError::connect)?;
    let engine = engine.clone();
    tokio::spawn(async move {
        let mut conn = Some(first);
        loop {
            if let Some(done) = conn.take() {
                engine.inner.up.send_replace(true);
                engine.wake_all();
                tokio::select! {
                    () = done => {}
                    () = engine.stopping() => return,
                }
                engine.inner.up.send_replace(false);
                tracing::warn!("postgres store: the LISTEN connection was lost; reconnecting");
                engine.wake_all();
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = engine.stopping() => return,
            }
            match connect(&engine, &config).await {
                Ok(c) => {
                    tracing::info!("postgres store: the database is reachable again");
                    conn = Some(c);
                }
                Err(e) => tracing::debug!("postgres store: reconnecting: {e}"),
            }
        }
    });
    Ok(())
}

/// Connects and listens; the future ends when the connection does.
async fn connect(
    engine: &PgEngine,
    config: &tokio_postgres::Config,
) -> Result<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>, tokio_postgres::Error> {
    let (client, mut conn) = config.connect(engine.inner.tls.clone()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection's messages: notifications, until it ends.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("postgres store: LISTEN connection: {e}");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let engine = engine.clone();
    Ok(Box::pin(async move {
        // Holding the client keeps the connection open.
        let _client = client;
        while let Some(queue) = rx.recv().await {
            engine.wake(&queue);
        }
        driver.abort();
    }))
}
