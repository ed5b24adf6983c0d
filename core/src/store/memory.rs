//! The in-memory [`Store`]: a B-tree of rows, with transactions staged in an
//! overlay and applied only on success. For tests, benches and ephemeral
//! devices; it has the same atomicity as the durable store, minus durability.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::{Store, Table, Txn, Value};
use crate::error::{Error, Result};

type Rows = BTreeMap<(Table, Vec<u8>), Value>;

/// Rows in memory. `Clone` takes a snapshot (tests and fuzzing start many
/// runs from one prepared state).
#[derive(Clone, Default)]
pub struct MemoryStore {
    rows: Rows,
}

impl core::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MemoryStore({} rows)", self.rows.len())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows in `table` (for tests and diagnostics).
    pub fn count(&self, table: Table) -> usize {
        self.rows.keys().filter(|(t, _)| *t == table).count()
    }
}

/// A transaction over a [`MemoryStore`]: writes go to an overlay
/// (`None` = deleted) merged into the rows on commit.
pub struct MemoryTxn<'t> {
    base: &'t Rows,
    overlay: BTreeMap<(Table, Vec<u8>), Option<Value>>,
}

impl Txn for MemoryTxn<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>> {
        let k = (table, key.to_vec());
        Ok(match self.overlay.get(&k) {
            Some(v) => v.clone(),
            None => self.base.get(&k).cloned(),
        })
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.overlay
            .insert((table, key.to_vec()), Some(Zeroizing::new(value.to_vec())));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<()> {
        self.overlay.insert((table, key.to_vec()), None);
        Ok(())
    }

    fn delete_range(&mut self, table: Table, from: &[u8], to: &[u8]) -> Result<()> {
        let lo = (table, from.to_vec());
        let hi = (table, to.to_vec());
        let doomed: Vec<_> = self
            .base
            .range(lo.clone()..hi.clone())
            .map(|(k, _)| k.clone())
            .chain(self.overlay.range(lo..hi).map(|(k, _)| k.clone()))
            .collect();
        for k in doomed {
            self.overlay.insert(k, None);
        }
        Ok(())
    }

    fn keys_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lo = (table, prefix.to_vec());
        let mut keys = std::collections::BTreeSet::new();
        for ((t, k), _) in self.base.range(lo.clone()..) {
            if *t != table || !k.starts_with(prefix) {
                break;
            }
            keys.insert(k.clone());
        }
        for ((t, k), v) in self.overlay.range(lo..) {
            if *t != table || !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }
}

impl Store for MemoryStore {
    type Txn<'t> = MemoryTxn<'t>;

    fn transaction<R, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut Self::Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut txn = MemoryTxn {
            base: &self.rows,
            overlay: BTreeMap::new(),
        };
        let out = f(&mut txn)?;
        let overlay = txn.overlay;
        for (k, v) in overlay {
            match v {
                Some(v) => {
                    self.rows.insert(k, v);
                }
                None => {
                    self.rows.remove(&k);
                }
            }
        }
        Ok(out)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Value>> {
        Ok(self.rows.get(&(table, key.to_vec())).cloned())
    }
}
