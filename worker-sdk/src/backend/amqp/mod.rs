//! The `amqp://` backend: a RabbitMQ queue, such as the one the Kubernetes tutorial fills with
//! `amqp-publish` and work with `amqp-consume`.
//!
//! # Layout (queue `Q`)
//! | queue | what |
//! |---|---|
//! | `Q` | the work: one message per item (`wq push` publishes persistent messages to the default exchange, routing key `Q`, as `amqp-publish -r Q -p` does) |
//! | `Q.dead` | dead items: messages that failed fatally or too often, with the headers `x-workq-reason`, `x-workq-attempts`, `x-workq-died-at` (unix ms) |
//! | `Q.leases` | always empty; its *consumers* are the workq workers holding messages of `Q` (see Empty) |
//!
//! # Lifecycle
//! - **lease** is `basic.get` without auto-ack: the message stays unacknowledged
//!   on this client's channel. There is no lease deadline: a message is held for
//!   as long as the worker's connection lives, and comes back (marked
//!   redelivered) the moment it closes — a killed worker loses nothing.
//!   **renew** only checks that the channel still lives.
//! - **complete** is `basic.ack`, sent only once the handler (or program)
//!   succeeded.
//! - **fail** publishes a copy with the header `x-workq-attempts` raised by one —
//!   back to `Q`, or to `Q.dead` once the attempts reach [`DEFAULT_MAX_ATTEMPTS`]
//!   or the failure is fatal — waits for the broker's publisher confirm, then
//!   acknowledges the original. (A crash between the two delivers the item once
//!   more: at least once, never lost.) Retries go to the back of the queue.
//! - **release** is `basic.nack` with requeue: back at once, no attempt counted.
//!
//! # Empty (module `presence`)
//! AMQP tells a client a queue's ready messages and consumers, not its
//! unacknowledged ones. So a workq worker registers a consumer on `Q.leases`
//! before it takes a message and cancels it once it holds none; `Q` is empty
//! when it has no ready message, no consumer (an `amqp-consume` worker holding a
//! message is one) and `Q.leases` has no consumer but this client's. Read in that
//! order, a message is always either ready or held by a registered worker.
//! Messages held by other basic.get clients (not workq, not consumers) cannot
//! be seen.
//!
//! # What AMQP cannot do
//! A queue cannot be sealed, so it is never drained: workers stop when it is
//! empty or after N items. Dead items are messages in `Q.dead` and cannot be
//! listed without taking them; `requeue_dead` of all of them works.
//! Completions are not counted.

mod headers;
mod leases;
mod presence;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;

pub use headers::{ATTEMPTS_HEADER, DIED_AT_HEADER, REASON_HEADER};
pub use presence::leases_queue;

use super::QueueUrl;
use crate::error::{Error, Result};
use crate::random::random_uuid;
use crate::types::{DeadItem, ItemId, NewItem, Pushed, QueueInfo, QueueName, QueueSettings, Stats};

/// Attempts before a message goes to `Q.dead` (the contract's default,
/// [`workq_proto::defaults::MAX_ATTEMPTS`]).
pub const DEFAULT_MAX_ATTEMPTS: u32 = workq_proto::defaults::MAX_ATTEMPTS;

/// The dead-letter queue of `queue`.
pub fn dead_queue(queue: &QueueName) -> String {
    format!("{queue}.dead")
}

/// A held message.
struct Held {
    queue: QueueName,
    generation: u64,
    tag: u64,
    payload: Vec<u8>,
    properties: BasicProperties,
    attempts_before: u32,
}

/// The connection and what is held on it.
#[derive(Default)]
struct State {
    conn: Option<Connection>,
    channel: Option<Channel>,
    /// Bumped on every new channel: tokens of older ones are stale.
    generation: u64,
    held: HashMap<String, Held>,
    /// Per queue: this client's consumer on `Q.leases`, while it holds messages.
    holders: HashMap<String, (String, Consumer)>,
    /// Queues seen to exist: a `basic.get` on a missing queue would close the
    /// work channel, and with it every lease on it.
    known: HashSet<String>,
}

/// A connection to a RabbitMQ broker. All calls go through one channel, one at
/// a time.
#[derive(Clone)]
pub(crate) struct AmqpBackend {
    url: String,
    state: Arc<Mutex<State>>,
}

fn amqp_error(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> Error {
    let what = what.into();
    move |e| {
        let transient = !matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if !is_hard(p));
        Error::Backend {
            backend: "amqp",
            what,
            reason: crate::error::root_cause(&e),
            transient,
            source: Box::new(e),
        }
    }
}

fn is_hard(e: &lapin::protocol::AMQPError) -> bool {
    matches!(e.kind(), lapin::protocol::AMQPErrorKind::Hard(_))
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::NotSupported {
        backend: "amqp",
        what: what.into(),
    }
}

fn lost(queue: &QueueName, message: impl Into<String>) -> Error {
    Error::LeaseLost {
        queue: queue.to_string(),
        reason: crate::error::LeaseLostReason::Unknown,
        item: None,
        message: message.into(),
    }
}

fn name(s: &str) -> ShortString {
    s.into()
}

impl AmqpBackend {
    /// Connects at once, so that an unreachable broker is reported by `connect`.
    pub(crate) async fn connect(url: &QueueUrl, connect_timeout: Duration) -> Result<Self> {
        let this = AmqpBackend {
            url: url.url.clone(),
            state: Arc::new(Mutex::new(State::default())),
        };
        let mut st = this.state.lock().await;
        match tokio::time::timeout(connect_timeout, this.open(&mut st)).await {
            Ok(Ok(())) => {}
            Ok(Err(Error::Backend { reason, source, .. })) => {
                return Err(Error::Unreachable {
                    url: url.redacted(),
                    reason,
                    source,
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Unreachable {
                    url: url.redacted(),
                    reason: format!("no answer within {connect_timeout:?}"),
                    source: "connect timed out".into(),
                });
            }
        }
        drop(st);
        Ok(this)
    }

    /// (Re)opens the connection and the work channel, forgetting what was held
    /// on the old one (the broker has requeued it).
    async fn open(&self, st: &mut State) -> Result<()> {
        let alive = st.conn.as_ref().is_some_and(|c| c.status().connected());
        if !alive {
            st.conn = None;
            let conn = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(amqp_error("connecting"))?;
            st.conn = Some(conn);
        }
        let conn = st
            .conn
            .as_ref()
            .ok_or_else(|| Error::Protocol("no AMQP connection".into()))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(amqp_error("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error("enabling publisher confirms"))?;
        st.channel = Some(channel);
        st.generation += 1;
        if !st.held.is_empty() {
            tracing::warn!(
                n = st.held.len(),
                "AMQP channel lost: its unacknowledged messages went back to their queues"
            );
        }
        st.held.clear();
        st.holders.clear();
        Ok(())
    }

    /// The work channel, reopened when it (or the connection) was lost.
    async fn channel(&self, st: &mut State) -> Result<Channel> {
        let ok = st.channel.as_ref().is_some_and(|c| c.status().connected());
        if !ok {
            self.open(st).await?;
        }
        st.channel
            .clone()
            .ok_or_else(|| Error::Protocol("no AMQP channel".into()))
    }

    /// A throwaway channel for calls that close their channel on failure
    /// (a passive declare of a missing queue).
    async fn probe(&self, st: &mut State) -> Result<Channel> {
        self.channel(st).await?;
        let conn = st
            .conn
            .as_ref()
            .ok_or_else(|| Error::Protocol("no AMQP connection".into()))?;
        conn.create_channel()
            .await
            .map_err(amqp_error("opening a channel"))
    }

    /// `(ready messages, consumers)` of a queue, `None` when it does not exist.
    async fn peek(&self, st: &mut State, queue: &str) -> Result<Option<(u32, u32)>> {
        let probe = self.probe(st).await?;
        let answer = probe
            .queue_declare(
                name(queue),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await;
        match answer {
            Ok(q) => {
                let _ = probe.close(200, "ok".into()).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(amqp_error(format!("inspecting queue {queue}"))(e)),
        }
    }

    /// Declares a durable queue (as `amqp-declare-queue -d` does).
    async fn declare(&self, st: &mut State, queue: &str) -> Result<()> {
        let probe = self.probe(st).await?;
        probe
            .queue_declare(
                name(queue),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error(format!("declaring queue {queue}")))?;
        let _ = probe.close(200, "ok".into()).await;
        Ok(())
    }

    /// Publishes one persistent message and waits for the broker's confirm.
    async fn publish(
        &self,
        st: &mut State,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let channel = self.channel(st).await?;
        let what = || format!("publishing to queue {routing_key}");
        let confirm = channel
            .basic_publish(
                name(""),
                name(routing_key),
                BasicPublishOptions::default(),
                payload,
                props.with_delivery_mode(2),
            )
            .await
            .map_err(amqp_error(what()))?
            .await
            .map_err(amqp_error(what()))?;
        match confirm {
            Confirmation::Nack(_) => Err(Error::Backend {
                backend: "amqp",
                what: what(),
                reason: "the broker refused the message (nack)".into(),
                transient: true,
                source: "publisher confirm: nack".into(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        if *settings != QueueSettings::default() {
            return Err(unsupported(format!(
                "store queue settings: leases last as long as the connection, and items go to {} after {DEFAULT_MAX_ATTEMPTS} attempts",
                dead_queue(queue)
            )));
        }
        let created = {
            let mut st = self.state.lock().await;
            let existed = self.peek(&mut st, queue.as_str()).await?.is_some();
            self.declare(&mut st, queue.as_str()).await?;
            !existed
        };
        Ok((self.get_queue(queue).await?, created))
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        let mut st = self.state.lock().await;
        let Some((ready, _consumers)) = self.peek(&mut st, queue.as_str()).await? else {
            return Err(Error::QueueNotFound {
                queue: queue.to_string(),
            });
        };
        let dead = self
            .peek(&mut st, &dead_queue(queue))
            .await?
            .map_or(0, |(n, _)| n);
        let leased = st.held.values().filter(|h| h.queue == *queue).count() as u64;
        let (pending, dead) = (u64::from(ready), u64::from(dead));
        Ok(QueueInfo {
            name: queue.to_string(),
            settings: QueueSettings {
                max_attempts: Some(DEFAULT_MAX_ATTEMPTS),
                ..QueueSettings::default()
            },
            stats: Stats {
                queue: queue.to_string(),
                enqueued: pending + leased + dead,
                pending,
                delayed: 0,
                leased,
                completed: 0,
                dead,
                retried: 0,
                sealed: false,
                drained: false,
                state: crate::types::QueueState::of(false, pending == 0 && leased == 0),
            },
        })
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        Err(unsupported(
            "list queues: AMQP has no call for it (the management API does); name one with -q",
        ))
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        let mut st = self.state.lock().await;
        let existed = self.peek(&mut st, queue.as_str()).await?.is_some();
        st.known.remove(queue.as_str());
        st.known.remove(&leases_queue(queue));
        let channel = self.channel(&mut st).await?;
        for q in [queue.to_string(), dead_queue(queue), leases_queue(queue)] {
            channel
                .queue_delete(name(&q), QueueDeleteOptions::default())
                .await
                .map_err(amqp_error(format!("deleting queue {q}")))?;
        }
        Ok(existed)
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let mut st = self.state.lock().await;
        if self.peek(&mut st, queue.as_str()).await?.is_none() {
            return Err(Error::QueueNotFound {
                queue: queue.to_string(),
            });
        }
        let channel = self.channel(&mut st).await?;
        let n = channel
            .queue_purge(name(queue.as_str()), QueuePurgeOptions::default())
            .await
            .map_err(amqp_error(format!("purging queue {queue}")))?;
        Ok(u64::from(n))
    }

    pub(crate) async fn seal(&self, _queue: &QueueName) -> Result<QueueInfo> {
        Err(unsupported(
            "seal a queue: AMQP has no such notion; stop workers when the queue is empty (wq consume --until-empty) or after N items (-c N)",
        ))
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        create: bool,
    ) -> Result<Vec<Pushed>> {
        if items.iter().any(|i| i.idempotency_key.is_some()) {
            return Err(unsupported(
                "deduplicate items (--dedupe): a RabbitMQ queue has no idempotency keys",
            ));
        }
        if items.iter().any(|i| i.delay.is_some_and(|d| !d.is_zero())) {
            return Err(unsupported("delay items"));
        }
        let mut st = self.state.lock().await;
        if self.peek(&mut st, queue.as_str()).await?.is_none() {
            if !create {
                return Err(Error::QueueNotFound {
                    queue: queue.to_string(),
                });
            }
            self.declare(&mut st, queue.as_str()).await?;
        }
        let mut pushed = Vec::with_capacity(items.len());
        for item in items {
            let id = random_uuid();
            let mut props = BasicProperties::default().with_message_id(id.as_str().into());
            if !item.attributes.is_empty() {
                let mut headers = FieldTable::default();
                for (k, v) in item.attributes {
                    headers.insert(k.into(), AMQPValue::LongString(v.into()));
                }
                props = props.with_headers(headers);
            }
            let sent = self
                .publish(&mut st, queue.as_str(), &item.payload, props)
                .await;
            if let Err(source) = sent {
                if pushed.is_empty() {
                    return Err(source);
                }
                return Err(Error::PushInterrupted {
                    queue: queue.to_string(),
                    pushed: pushed.len(),
                    source: Box::new(source),
                });
            }
            pushed.push(Pushed {
                id: ItemId(id),
                duplicate: false,
            });
        }
        Ok(pushed)
    }

    pub(crate) async fn list_dead(&self, queue: &QueueName, _limit: u32) -> Result<Vec<DeadItem>> {
        Err(unsupported(format!(
            "list dead items: they are the messages of queue {dq}, which AMQP cannot show without taking them; see them with `amqp-consume -q {dq} -c 1 cat` (or the management UI), or send them all back with `wq dead --requeue`",
            dq = dead_queue(queue)
        )))
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, ids: &[ItemId]) -> Result<u64> {
        if !ids.is_empty() {
            return Err(unsupported(
                "requeue dead items by id: use `wq dead --requeue` without --id to send them all back",
            ));
        }
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let dq = dead_queue(queue);
        if self.peek(st, &dq).await?.is_none() {
            return Ok(0);
        }
        let mut moved = 0;
        loop {
            let channel = self.channel(st).await?;
            let got = channel
                .basic_get(name(&dq), BasicGetOptions { no_ack: false })
                .await
                .map_err(amqp_error(format!("taking a message from queue {dq}")))?;
            let Some(msg) = got else { break };
            let d = msg.delivery;
            let mut props = d.properties.clone();
            if let Some(headers) = props.headers().clone() {
                let mut kept = FieldTable::default();
                for (k, v) in headers.inner() {
                    if !k.as_str().starts_with("x-workq-") {
                        kept.insert(k.clone(), v.clone());
                    }
                }
                props = props.with_headers(kept);
            }
            self.publish(st, queue.as_str(), &d.data, props).await?;
            channel
                .basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .map_err(amqp_error(format!("acknowledging a message of queue {dq}")))?;
            moved += 1;
        }
        Ok(moved)
    }
}
