//! `moka::sync::Cache` weighted by value length. A cache: it drops what does
//! not fit in the budget (TinyLFU admission may also refuse new entries).

use anyhow::Result;
use bytes::Bytes;
use moka::sync::Cache;

use crate::store::{Store, StoreConfig};

pub struct MokaAdapter {
    cache: Cache<String, Bytes>,
}

impl MokaAdapter {
    pub fn new(cfg: &StoreConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(cfg.budget)
            .weigher(|_key: &String, value: &Bytes| u32::try_from(value.len()).unwrap_or(u32::MAX))
            .build();
        Self { cache }
    }
}

impl Store for MokaAdapter {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        self.cache.insert(key.to_owned(), value);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.cache.get(key))
    }

    fn settle(&self) -> Result<()> {
        self.cache.run_pending_tasks();
        Ok(())
    }

    fn notes(&self) -> String {
        self.cache.run_pending_tasks();
        format!(
            "lossy cache: holds {} entries, {:.0} MiB",
            self.cache.entry_count(),
            self.cache.weighted_size() as f64 / (1024.0 * 1024.0)
        )
    }
}
