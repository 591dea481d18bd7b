//! Dead items: listed a page at a time, and requeued.

use super::Engine;
use crate::error::Result;
use crate::names::{ItemId, QueueName};
use crate::queue::DeadItem;

impl Engine {
    /// Dead items, oldest first, at most `limit`, and no more than fit in
    /// one answer ([`crate::settings::Limits::answer_budget`]).
    pub fn list_dead(&self, name: &QueueName, limit: usize) -> Result<Vec<DeadItem>> {
        Ok(self.list_dead_page(name, None, limit)?.0)
    }

    /// Dead items with ids after `after`, in id order, at most `limit` and
    /// no more than fit in one answer; and whether more follow.
    pub fn list_dead_page(
        &self,
        name: &QueueName,
        after: Option<ItemId>,
        limit: usize,
    ) -> Result<(Vec<DeadItem>, bool)> {
        let budget = self.inner.limits.answer_budget();
        self.read(name, |q| q.dead_page(after, limit, budget))
    }

    /// Moves dead items (all when `ids` is empty) back to pending.
    pub async fn requeue_dead(&self, name: &QueueName, ids: &[ItemId]) -> Result<u64> {
        self.mutate(name, |q, _, j| q.requeue_dead(ids, j)).await
    }
}
