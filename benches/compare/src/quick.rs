//! `quick_cache::sync::Cache` weighted by value length. A cache: it drops what
//! does not fit in the budget.

use anyhow::Result;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::store::{Store, StoreConfig};

#[derive(Clone, Copy)]
struct ByValueLen;

impl Weighter<String, Bytes> for ByValueLen {
    fn weight(&self, _key: &String, value: &Bytes) -> u64 {
        value.len() as u64
    }
}

pub struct QuickAdapter {
    cache: Cache<String, Bytes, ByValueLen>,
}

impl QuickAdapter {
    pub fn new(cfg: &StoreConfig) -> Self {
        let fit = (cfg.budget / cfg.value_size.max(1) as u64) as usize;
        let estimated_items = cfg.n_keys.min(fit).max(1);
        Self {
            cache: Cache::with_weighter(estimated_items, cfg.budget, ByValueLen),
        }
    }
}

impl Store for QuickAdapter {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        self.cache.insert(key.to_owned(), value);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.cache.get(key))
    }

    fn notes(&self) -> String {
        format!(
            "lossy cache: holds {} entries, {:.0} MiB",
            self.cache.len(),
            self.cache.weight() as f64 / (1024.0 * 1024.0)
        )
    }
}
