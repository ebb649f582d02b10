//! `foyer::HybridCache` (in-memory cache + block engine on a filesystem device).
//!
//! foyer is a cache: when more entries are handed to its disk writer than its
//! flush buffer holds, it silently drops them. To compare like with like this
//! adapter applies back-pressure: after every [`BACKPRESSURE_BYTES`] handed to
//! it (inserted values, and values it reloaded from disk, whose admission into
//! memory evicts others to the disk writer) the inserting thread waits on
//! `HybridCache::storage().wait()`, which returns once every flusher has
//! written what it was given and pending reclaims are done. The disk device is
//! sized to several times the working set so the disk engine never evicts.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, PsyncIoEngineConfig, Source,
};
use tokio::runtime::Runtime;

use crate::store::{Store, StoreConfig};

/// Bytes handed to foyer between two waits on its storage.
pub const BACKPRESSURE_BYTES: u64 = 4 << 20;

/// foyer's default block size; an entry must fit in one block.
const BLOCK_SIZE: usize = 16 << 20;

pub struct FoyerAdapter {
    // Field order matters: the cache is closed in `Drop` and dropped before the
    // runtime it spawns its tasks on.
    cache: HybridCache<String, Bytes>,
    runtime: Runtime,
    pending: AtomicU64,
    waits: AtomicU64,
    disk_hits: AtomicU64,
}

impl FoyerAdapter {
    pub fn new(cfg: &StoreConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("foyer-rt")
            .enable_all()
            .build()
            .context("building tokio runtime for foyer")?;
        // Room for the whole working set several times over (replacements
        // write new copies), in whole blocks, so nothing is ever reclaimed.
        let capacity = (cfg.working_set() as usize)
            .saturating_mul(4)
            .max(512 << 20)
            .next_multiple_of(BLOCK_SIZE);
        let budget = cfg.budget as usize;
        let dir = cfg.dir.clone();
        let cache = runtime.block_on(async move {
            let device = FsDeviceBuilder::new(dir).with_capacity(capacity).build()?;
            HybridCacheBuilder::new()
                .with_name("compare")
                .with_policy(HybridCachePolicy::WriteOnEviction)
                .with_flush_on_close(false)
                .memory(budget)
                .with_weighter(|_key: &String, value: &Bytes| value.len())
                .storage()
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(BlockEngineConfig::new(device).with_block_size(BLOCK_SIZE))
                .build()
                .await
        });
        let cache = cache.context("building foyer HybridCache")?;
        Ok(Self {
            cache,
            runtime,
            pending: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
        })
    }

    /// Account `bytes` handed to foyer; wait for its storage once enough piled up.
    fn handed(&self, bytes: u64) {
        let pending = self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if pending >= BACKPRESSURE_BYTES {
            self.pending.store(0, Ordering::Relaxed);
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.runtime.block_on(self.cache.storage().wait());
        }
    }
}

impl Store for FoyerAdapter {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        let len = value.len() as u64;
        drop(self.cache.insert(key.to_owned(), value));
        self.handed(len);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let fut = self.cache.get(key);
        let entry = if fut.need_await() {
            self.runtime.block_on(fut)?
        } else {
            match fut.try_unwrap() {
                Ok(entry) => Some(entry),
                Err(fut) => self.runtime.block_on(fut)?,
            }
        };
        Ok(entry.map(|entry| {
            let value = entry.value().clone();
            if entry.source() == Source::Disk {
                self.disk_hits.fetch_add(1, Ordering::Relaxed);
                self.handed(value.len() as u64);
            }
            value
        }))
    }

    fn settle(&self) -> Result<()> {
        self.runtime.block_on(self.cache.storage().wait());
        Ok(())
    }

    fn reloads(&self) -> Option<u64> {
        Some(self.disk_hits.load(Ordering::Relaxed))
    }

    fn notes(&self) -> String {
        format!(
            "back-pressure: waited on storage {} times (every {} MiB handed)",
            self.waits.load(Ordering::Relaxed),
            BACKPRESSURE_BYTES >> 20
        )
    }
}

impl Drop for FoyerAdapter {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.block_on(self.cache.close()) {
            eprintln!("warning: closing foyer failed: {e}");
        }
    }
}
