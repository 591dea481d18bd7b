//! The journal: the changes a transition made, for the store to make too.

use crate::store::StoreOp;

/// Where a transition writes the changes the store must make; disabled for
/// stores that keep nothing.
#[derive(Debug, Default)]
pub struct Journal {
    enabled: bool,
    ops: Vec<StoreOp>,
}

impl Journal {
    /// A journal that records ops when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Journal {
            enabled,
            ops: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, op: impl FnOnce() -> StoreOp) {
        if self.enabled {
            self.ops.push(op());
        }
    }

    /// The recorded ops.
    pub fn into_ops(self) -> Vec<StoreOp> {
        self.ops
    }
}
