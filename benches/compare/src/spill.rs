//! Adapter for the crate under test.

use anyhow::{Context, Result};
use bytes::Bytes;
use spillstore::SpillStore;

use crate::store::{Store, StoreConfig};

pub struct SpillAdapter {
    inner: SpillStore<String>,
}

impl SpillAdapter {
    /// `exact_lru` picks the eviction policy (see `Builder::exact_lru`).
    pub fn new(cfg: &StoreConfig, exact_lru: bool) -> Result<Self> {
        let max_object = (cfg.value_size as u64 * 2).max(4 << 20);
        let inner = SpillStore::<String>::builder()
            .max_size(cfg.budget)
            .max_object_size(max_object)
            .dump_dir(cfg.dir.clone())
            .exact_lru(exact_lru)
            .build()
            .context("building spillstore")?;
        Ok(Self { inner })
    }
}

impl Store for SpillAdapter {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        self.inner.insert(key.to_owned(), value)?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.inner.get(key)?)
    }

    fn reloads(&self) -> Option<u64> {
        Some(self.inner.stats().reloads)
    }

    fn notes(&self) -> String {
        let s = self.inner.stats();
        format!(
            "entries {}, mem {:.0} MiB, disk {:.0} MiB, spills {}, reloads {} ({} left on disk)",
            s.entries,
            s.memory_bytes as f64 / MIB,
            s.disk_bytes as f64 / MIB,
            s.spills,
            s.reloads,
            s.unpromoted_reloads
        )
    }
}

const MIB: f64 = 1024.0 * 1024.0;
