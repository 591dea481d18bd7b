//! Leases on an AMQP queue: `basic.get` without auto-ack, held for as long as
//! the channel lives; completion is an ack, failure a re-publish then an ack,
//! release a nack with requeue.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use tokio::time::Instant;

use super::headers::{
    ATTEMPTS_HEADER, DIED_AT_HEADER, REASON_HEADER, attributes, int_header, with_headers,
};
use super::{
    AmqpBackend, DEFAULT_MAX_ATTEMPTS, Held, State, amqp_error, dead_queue, is_not_found, lost,
    name,
};
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::types::{
    Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, QueueName, to_unix_ms,
};

/// Longest pause between two polls of an empty queue during a lease call's wait.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

impl AmqpBackend {
    pub(crate) async fn lease(&self, queue: &QueueName, opts: &LeaseOptions) -> Result<Leased> {
        let give_up = Instant::now() + opts.wait;
        let lease = opts.lease.unwrap_or(workq_proto::defaults::LEASE);
        let mut pause = Backoff::for_poll(MAX_POLL_PAUSE);
        loop {
            let leased = self.try_lease(queue, opts.max_items.max(1), lease).await?;
            let now = Instant::now();
            if !leased.items.is_empty() || now >= give_up {
                return Ok(leased);
            }
            tokio::time::sleep(pause.next_delay().min(give_up - now)).await;
        }
    }

    async fn try_lease(&self, queue: &QueueName, max: u32, lease: Duration) -> Result<Leased> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        if !st.known.contains(queue.as_str()) {
            if self.peek(st, queue.as_str()).await?.is_none() {
                return Err(Error::QueueNotFound {
                    queue: queue.to_string(),
                });
            }
            st.known.insert(queue.to_string());
        }
        let channel = self.channel(st).await?;
        // Registered as a holder before taking: see "Empty" in the module docs.
        self.hold_on(st, &channel, queue).await?;
        let what = || format!("taking a message from queue {queue}");
        let mut items = Vec::new();
        for _ in 0..max.min(1000) {
            let got = channel
                .basic_get(name(queue.as_str()), BasicGetOptions { no_ack: false })
                .await;
            let msg = match got {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) if is_not_found(&e) => {
                    st.known.remove(queue.as_str());
                    return Err(Error::QueueNotFound {
                        queue: queue.to_string(),
                    });
                }
                Err(e) => return Err(amqp_error(what())(e)),
            };
            let d = msg.delivery;
            let attempts_before = int_header(&d.properties, ATTEMPTS_HEADER)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0);
            let token = format!("{}.{}", st.generation, d.delivery_tag);
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| token.clone(), |m| m.to_string());
            let attributes = attributes(&d.properties);
            items.push(LeasedItem {
                id: ItemId(id),
                token: LeaseToken(token.clone()),
                payload: d.data.clone(),
                attributes,
                attempt: attempts_before.saturating_add(1),
                lease_deadline: SystemTime::now() + lease,
                enqueued_at: d
                    .properties
                    .timestamp()
                    .map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::from_secs(t)),
            });
            st.held.insert(
                token,
                Held {
                    queue: queue.clone(),
                    generation: st.generation,
                    tag: d.delivery_tag,
                    payload: d.data,
                    properties: d.properties,
                    attempts_before,
                },
            );
        }
        if !items.is_empty() {
            return Ok(Leased {
                items,
                drained: false,
                empty: false,
            });
        }
        // Nothing ready now. Empty when no one else may hold a message either.
        self.let_go(st, queue).await;
        let empty = self.nobody_holds(st, queue).await?;
        Ok(Leased {
            items,
            drained: false,
            empty,
        })
    }

    /// Checks that every token is held on the current channel; nothing changes
    /// when one is not.
    fn check(&self, st: &State, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        for t in tokens {
            match st.held.get(t.as_str()) {
                Some(h) if h.generation == st.generation && h.queue == *queue => {}
                _ => {
                    return Err(lost(
                        queue,
                        format!(
                            "message {} is not held on this connection (it was lost and requeued by the broker, or finished)",
                            t.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The current channel, once every token is checked to be held on it. A
    /// reopened channel forgets what the old one held: the check comes after it.
    async fn channel_holding(
        &self,
        st: &mut State,
        queue: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Channel> {
        let channel = self.channel(st).await?;
        self.check(st, queue, tokens)?;
        Ok(channel)
    }

    pub(crate) async fn renew(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<SystemTime>> {
        let st = self.state.lock().await;
        let alive = st.channel.as_ref().is_some_and(|c| c.status().connected());
        if !alive {
            return Err(lost(
                queue,
                "the AMQP channel closed: the broker requeued its messages",
            ));
        }
        self.check(&st, queue, tokens)?;
        let until = SystemTime::now() + lease.unwrap_or(workq_proto::defaults::LEASE);
        Ok(vec![until; tokens.len()])
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let channel = self.channel_holding(st, queue, tokens).await?;
        for t in tokens {
            if let Some(h) = st.held.get(t.as_str()) {
                ack(&channel, h.tag, queue).await?;
            }
            st.held.remove(t.as_str());
        }
        self.let_go(st, queue).await;
        Ok(())
    }

    pub(crate) async fn fail(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        failure: &Failure,
    ) -> Result<u32> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        self.channel_holding(st, queue, tokens).await?;
        let mut dead = 0;
        for t in tokens {
            let Some(h) = st.held.remove(t.as_str()) else {
                continue;
            };
            let attempts = h.attempts_before.saturating_add(1);
            let to_dead = failure.fatal || attempts >= DEFAULT_MAX_ATTEMPTS;
            let attempts_v = AMQPValue::LongLongInt(i64::from(attempts));
            let (target, props) = if to_dead {
                let died = i64::try_from(to_unix_ms(SystemTime::now())).unwrap_or(i64::MAX);
                let dq = dead_queue(queue);
                self.declare(st, &dq).await?;
                (
                    dq,
                    with_headers(
                        &h.properties,
                        vec![
                            (ATTEMPTS_HEADER, attempts_v),
                            (
                                REASON_HEADER,
                                AMQPValue::LongString(failure.reason.clone().into()),
                            ),
                            (DIED_AT_HEADER, AMQPValue::LongLongInt(died)),
                        ],
                    ),
                )
            } else {
                (
                    queue.to_string(),
                    with_headers(&h.properties, vec![(ATTEMPTS_HEADER, attempts_v)]),
                )
            };
            let published = self.publish(st, &target, &h.payload, props).await;
            if let Err(e) = published {
                // Not acknowledged: keep holding it, so that a retry can finish it.
                let token = t.as_str().to_owned();
                st.held.insert(token, h);
                return Err(e);
            }
            let channel = self.channel(st).await?;
            if st.generation != h.generation {
                return Err(lost(
                    queue,
                    "the AMQP channel closed while the failure was recorded: the broker requeued the message, which will come once more",
                ));
            }
            ack(&channel, h.tag, queue).await?;
            if to_dead {
                dead += 1;
            }
        }
        self.let_go(st, queue).await;
        Ok(dead)
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let channel = self.channel_holding(st, queue, tokens).await?;
        for t in tokens {
            if let Some(h) = st.held.remove(t.as_str()) {
                channel
                    .basic_nack(
                        h.tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    )
                    .await
                    .map_err(amqp_error(format!("requeueing a message of queue {queue}")))?;
            }
        }
        self.let_go(st, queue).await;
        Ok(())
    }
}

/// Acknowledges the message delivered as `tag` from `queue`: it is finished.
async fn ack(channel: &Channel, tag: u64, queue: &QueueName) -> Result<()> {
    channel
        .basic_ack(tag, BasicAckOptions::default())
        .await
        .map_err(amqp_error(format!(
            "acknowledging a message of queue {queue}"
        )))
}
