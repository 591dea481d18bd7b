//! Where a queue keeps its live items: a dense slab of items and a small
//! id → slot index.
//!
//! A `HashMap<ItemId, Item>` sized for a million items sits at half load
//! after its last doubling, so every item pays for two buckets of item size.
//! Here only the index (16 bytes a bucket) is hashed; the items themselves
//! sit in a slab that reuses the slots of completed items, so memory per
//! queued item stays close to the item's own size.

use crate::item::Item;
use crate::names::ItemId;
use rustc_hash::FxHashMap;
use slab::Slab;

/// Live items by id.
#[derive(Debug, Default)]
pub struct ItemTable {
    /// Item ids are server-assigned, so a fast non-keyed hash is safe here.
    index: FxHashMap<ItemId, usize>,
    slots: Slab<Item>,
}

impl ItemTable {
    /// The item with this id.
    pub fn get(&self, id: &ItemId) -> Option<&Item> {
        self.index.get(id).and_then(|&slot| self.slots.get(slot))
    }

    /// The item with this id, to change it.
    pub fn get_mut(&mut self, id: &ItemId) -> Option<&mut Item> {
        self.index
            .get(id)
            .and_then(|&slot| self.slots.get_mut(slot))
    }

    /// Adds an item under its id, replacing one with the same id.
    pub fn insert(&mut self, item: Item) {
        match self.index.get(&item.id) {
            Some(&slot) => self.slots[slot] = item,
            None => {
                let id = item.id;
                let slot = self.slots.insert(item);
                self.index.insert(id, slot);
            }
        }
    }

    /// Removes and returns the item with this id.
    pub fn remove(&mut self, id: &ItemId) -> Option<Item> {
        let slot = self.index.remove(id)?;
        self.slots.try_remove(slot)
    }

    /// Every item, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Item> {
        self.slots.iter().map(|(_, item)| item)
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Attributes, ItemState};

    fn item(id: u64) -> Item {
        Item {
            id: ItemId(id),
            payload: prost::bytes::Bytes::from(id.to_string()),
            attributes: Attributes::default(),
            idempotency_key: None,
            attempts: 0,
            enqueued_at: 0,
            state: ItemState::Pending,
        }
    }

    #[test]
    fn insert_get_replace_remove_and_reuse_slots() {
        let mut t = ItemTable::default();
        for id in 0..100 {
            t.insert(item(id));
        }
        assert_eq!(t.len(), 100);
        assert_eq!(&t.get(&ItemId(42)).expect("42").payload[..], b"42");
        let mut changed = item(42);
        changed.attempts = 3;
        t.insert(changed);
        assert_eq!(t.len(), 100);
        assert_eq!(t.get(&ItemId(42)).expect("42").attempts, 3);
        for id in 0..50 {
            assert_eq!(t.remove(&ItemId(id)).map(|i| i.id), Some(ItemId(id)));
        }
        assert!(t.remove(&ItemId(0)).is_none());
        assert!(t.get(&ItemId(10)).is_none());
        for id in 100..150 {
            t.insert(item(id));
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.slots.capacity(), 100.max(t.slots.capacity()));
        let mut ids: Vec<u64> = t.values().map(|i| i.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (50..150).collect::<Vec<_>>());
        t.get_mut(&ItemId(149)).expect("149").attempts = 1;
        assert_eq!(t.get(&ItemId(149)).expect("149").attempts, 1);
    }
}
