//! Who holds messages of a queue: how a workq worker tells that an AMQP queue
//! is empty.
//!
//! AMQP tells a client a queue's ready messages and consumers, not its
//! unacknowledged ones. So a workq worker registers a consumer on `Q.leases`
//! ([`leases_queue`]) before it takes a message and cancels it once it holds
//! none; `Q` is empty when it has no ready message, no consumer (an
//! `amqp-consume` worker holding a message is one) and `Q.leases` has no
//! consumer but this client's.

use lapin::Channel;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

use super::{AmqpBackend, State, amqp_error, name};
use crate::error::Result;
use crate::random::random_uuid;
use crate::types::QueueName;

/// The queue whose consumers are the workq workers holding messages of `queue`.
pub fn leases_queue(queue: &QueueName) -> String {
    format!("{queue}.leases")
}

impl AmqpBackend {
    /// Registers this client on `Q.leases` (once).
    pub(super) async fn hold_on(
        &self,
        st: &mut State,
        channel: &Channel,
        queue: &QueueName,
    ) -> Result<()> {
        if st.holders.contains_key(queue.as_str()) {
            return Ok(());
        }
        let leases = leases_queue(queue);
        if !st.known.contains(&leases) {
            self.declare(st, &leases).await?;
            st.known.insert(leases.clone());
        }
        let tag = format!("wq-{}", random_uuid());
        let consumer = channel
            .basic_consume(
                name(&leases),
                name(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error(format!("registering on queue {leases}")))?;
        st.holders.insert(queue.to_string(), (tag, consumer));
        Ok(())
    }

    /// Cancels this client's registration on `Q.leases` if it holds nothing there.
    pub(super) async fn let_go(&self, st: &mut State, queue: &QueueName) {
        if st.held.values().any(|h| h.queue == *queue) {
            return;
        }
        if let Some((tag, _consumer)) = st.holders.remove(queue.as_str())
            && let Some(channel) = &st.channel
            && let Err(e) = channel
                .basic_cancel(name(&tag), BasicCancelOptions::default())
                .await
        {
            tracing::debug!(error = %e, "cancelling the lease registration");
        }
    }

    /// Whether no one may hold a message of `queue`: this client holds none,
    /// `queue` has no consumer, and no other workq worker is registered on
    /// `Q.leases`. Asked when nothing was ready.
    pub(super) async fn nobody_holds(&self, st: &mut State, queue: &QueueName) -> Result<bool> {
        let holding = st.held.values().any(|h| h.queue == *queue);
        let consumers = self.peek(st, queue.as_str()).await?.map_or(0, |(_, c)| c);
        let holders = self
            .peek(st, &leases_queue(queue))
            .await?
            .map_or(0, |(_, c)| c);
        let mine = u32::from(st.holders.contains_key(queue.as_str()));
        Ok(!holding && consumers == 0 && holders.saturating_sub(mine) == 0)
    }
}
