//! The queues' lifecycle: create, describe, list, change, delete, purge
//! and seal.

use super::{Engine, QueueCell, QueueInfo, millis};
use crate::error::{Error, Result};
use crate::names::QueueName;
use crate::queue::Queue;
use crate::settings::{QueueSettings, SettingsPatch};
use crate::store::{Commit, StoreOp};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Engine {
    /// Creates a queue; zero settings take the defaults. Returns the queue and
    /// whether it was created (false: it existed with the same settings).
    pub async fn create_queue(
        &self,
        name: &QueueName,
        settings: QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        self.create_queue_with(name, settings.into()).await
    }

    /// Creates a queue; unset settings take the defaults. Returns the queue
    /// and whether it was created (false: it existed with the same settings).
    pub async fn create_queue_with(
        &self,
        name: &QueueName,
        settings: SettingsPatch,
    ) -> Result<(QueueInfo, bool)> {
        let settings = self
            .inner
            .limits
            .check_settings(settings, &self.inner.defaults)?;
        self.check_alive()?;
        let (info, commit) = {
            let mut map = self.write_map();
            if let Some(cell) = map.get(name) {
                let slot = cell.lock();
                if *slot.queue.settings() != settings {
                    return Err(Error::QueueExists(name.clone()));
                }
                return Ok((QueueInfo::of(&slot.queue), false));
            }
            let max_queues = self.inner.limits.max_queues;
            if map.len() >= max_queues {
                return Err(Error::Exhausted {
                    limit: "max_queues",
                    max: max_queues as u64,
                    message: format!(
                        "cannot create queue {name}: the server holds {} queues, its limit of \
                         {max_queues} (queue-server --max-queues); delete unused queues or \
                         raise the limit",
                        map.len()
                    ),
                });
            }
            let queue = Queue::with_budget(
                name.clone(),
                settings,
                millis(self.inner.limits.idempotency_window),
                self.inner.recall.clone(),
            );
            let info = QueueInfo::of(&queue);
            let commit = self.submit(vec![StoreOp::PutQueue(queue.record())]);
            let cell = Arc::new(QueueCell::new(queue));
            self.spawn_reaper(cell.clone());
            map.insert(name.clone(), cell);
            (info, commit)
        };
        commit.wait().await?;
        metrics::counter!("workq_queues_created_total").increment(1);
        Ok((info, true))
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        if self.inner.durable {
            self.inner
                .store
                .submit(ops)
                .on_failure(self.inner.on_failure.clone())
        } else {
            Commit::done()
        }
    }

    /// Describes one queue.
    pub fn get_queue(&self, name: &QueueName) -> Result<QueueInfo> {
        self.read(name, QueueInfo::of)
    }

    /// Describes every queue, by name.
    pub fn list_queues(&self) -> Vec<QueueInfo> {
        self.list_queues_page(None, usize::MAX).0
    }

    /// Describes the queues named after `after` (all when `None`), in name
    /// order, at most `limit`; and whether more follow.
    pub fn list_queues_page(
        &self,
        after: Option<&QueueName>,
        limit: usize,
    ) -> (Vec<QueueInfo>, bool) {
        let mut cells: Vec<(QueueName, Arc<QueueCell>)> = self
            .read_map()
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        let more = cells.len() > limit;
        let out = cells
            .iter()
            .take(limit)
            .map(|(_, c)| QueueInfo::of(&c.lock().queue))
            .collect();
        (out, more)
    }

    /// Changes a queue's settings: those set in `patch`, checked as
    /// CreateQueue checks them. Durable (the queue's record) when it answers.
    pub async fn update_queue(&self, name: &QueueName, patch: SettingsPatch) -> Result<QueueInfo> {
        let limits = self.inner.limits;
        self.mutate(name, |q, _, j| {
            let settings = limits.check_settings(patch, q.settings())?;
            q.set_settings(settings, j);
            Ok(QueueInfo::of(q))
        })
        .await
    }

    /// The server-wide count of finished leases and request ids remembered.
    pub fn remembered(&self) -> u64 {
        self.inner.recall.used()
    }

    /// Deletes a queue and all its items. Waiting lease calls answer
    /// `NOT_FOUND`; watchers see the end.
    pub async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        self.check_alive()?;
        let commit = {
            let mut map = self.write_map();
            let cell = map
                .remove(name)
                .ok_or_else(|| Error::QueueNotFound(name.clone()))?;
            let mut slot = cell.lock();
            slot.deleted = true;
            self.inner
                .queued_bytes
                .fetch_sub(slot.queue.queued_bytes(), Ordering::Relaxed);
            cell.available.notify_waiters();
            cell.timer.notify_one();
            cell.info.send_replace(None);
            self.submit(vec![StoreOp::DeleteQueue(name.clone())])
        };
        commit.wait().await?;
        Ok(())
    }

    /// Removes every pending and delayed item; returns how many.
    pub async fn purge(&self, name: &QueueName) -> Result<u64> {
        self.mutate(name, |q, _, j| Ok(q.purge(j))).await
    }

    /// Seals a queue.
    pub async fn seal(&self, name: &QueueName) -> Result<QueueInfo> {
        self.mutate(name, |q, _, j| {
            q.seal(j);
            Ok(QueueInfo::of(q))
        })
        .await
    }
}
