//! The common interface every compared store is driven through, and the factory
//! that builds one store per measured cell.

use std::path::PathBuf;

use anyhow::Result;
use bytes::Bytes;
use clap::ValueEnum;
use serde::Serialize;

/// One blob store under test. All methods take `&self`; implementations must be
/// usable from several threads at once.
pub trait Store: Send + Sync {
    /// Insert or replace the value of `key`.
    fn insert(&self, key: &str, value: Bytes) -> Result<()>;
    /// Look `key` up. `Ok(None)` is a miss (data the store does not hold).
    fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Called once after the preload, before any measurement: lets a store
    /// finish pending background work (moka housekeeping, foyer flushes).
    fn settle(&self) -> Result<()> {
        Ok(())
    }
    /// Values read back from the store's disk so far, if it has a disk.
    fn reloads(&self) -> Option<u64> {
        None
    }
    /// A short, store-specific note for the results table (counters, caveats).
    fn notes(&self) -> String {
        String::new()
    }
}

/// The stores that can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
pub enum Peer {
    /// This crate: sharded, spills LRU blobs to files, reloads through mmap.
    /// Its default policy: approximate recency (CLOCK).
    #[value(name = "spillstore")]
    #[serde(rename = "spillstore")]
    Spillstore,
    /// The same with `Builder::exact_lru(true)`: the seed's exact LRU order.
    #[value(name = "spillstore-exact")]
    #[serde(rename = "spillstore-exact")]
    SpillstoreExact,
    /// `quick_cache::sync::Cache`, weighted by value length (lossy).
    #[value(name = "quick_cache")]
    #[serde(rename = "quick_cache")]
    QuickCache,
    /// `moka::sync::Cache`, weighted by value length (lossy).
    #[value(name = "moka")]
    #[serde(rename = "moka")]
    Moka,
    /// `foyer::HybridCache` with a filesystem disk engine and back-pressure.
    #[value(name = "foyer")]
    #[serde(rename = "foyer")]
    Foyer,
    /// Port of the original Python design: one mutex, one file per key.
    #[value(name = "naive")]
    #[serde(rename = "naive")]
    Naive,
    /// Not a store: one `pread` per get from a plain file, the reference a
    /// cold reload should match. Runs only when asked for, and by default
    /// in `cold-reload`.
    #[value(name = "pread")]
    #[serde(rename = "pread")]
    Pread,
}

impl Peer {
    /// The peers of the warm workloads, all but the `pread` reference.
    pub const ALL: [Peer; 6] = [
        Peer::Spillstore,
        Peer::SpillstoreExact,
        Peer::QuickCache,
        Peer::Moka,
        Peer::Foyer,
        Peer::Naive,
    ];

    /// The peers of `cold-reload`: the stores with a disk, and the reference.
    pub const COLD: [Peer; 4] = [Peer::Spillstore, Peer::Foyer, Peer::Naive, Peer::Pread];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Spillstore => "spillstore",
            Peer::SpillstoreExact => "spillstore-exact",
            Peer::QuickCache => "quick_cache",
            Peer::Moka => "moka",
            Peer::Foyer => "foyer",
            Peer::Naive => "naive",
            Peer::Pread => "pread",
        }
    }
}

/// Everything a store needs to know to be built for one cell.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Memory budget in bytes (value bytes for the byte-weighted caches).
    pub budget: u64,
    /// Size of every value in this cell.
    pub value_size: usize,
    /// Number of distinct keys in this cell.
    pub n_keys: usize,
    /// Fresh, empty directory this store may write to; removed after the cell.
    pub dir: PathBuf,
}

impl StoreConfig {
    /// Total bytes of values the cell inserts in its preload.
    pub fn working_set(&self) -> u64 {
        self.value_size as u64 * self.n_keys as u64
    }
}

/// Build a fresh store of kind `peer`.
pub fn build(peer: Peer, cfg: &StoreConfig) -> Result<Box<dyn Store>> {
    Ok(match peer {
        Peer::Spillstore => Box::new(crate::spill::SpillAdapter::new(cfg, false)?),
        Peer::SpillstoreExact => Box::new(crate::spill::SpillAdapter::new(cfg, true)?),
        Peer::QuickCache => Box::new(crate::quick::QuickAdapter::new(cfg)),
        Peer::Moka => Box::new(crate::moka_peer::MokaAdapter::new(cfg)),
        Peer::Foyer => Box::new(crate::foyer_peer::FoyerAdapter::new(cfg)?),
        Peer::Naive => Box::new(crate::naive::NaiveStore::new(cfg)?),
        Peer::Pread => Box::new(crate::cold::PreadFile::new(cfg)?),
    })
}
