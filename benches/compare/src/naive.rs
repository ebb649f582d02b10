//! A naive port of the original Python design: one lock around one map of
//! in-memory values and an LRU queue of their keys; when the memory budget is
//! exceeded the least recently used value is written to its own file (named
//! by a hex hash of its key) with `std::fs::write`, and read back with
//! `std::fs::read` (the file is then deleted and the value is in memory
//! again). Everything, file I/O included, happens under the one lock.
//!
//! Touching a key moves it to the back of the queue with a linear search, like
//! `list.remove(key); list.append(key)` in Python; the search starts from the
//! back, where popular keys are.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;

use crate::store::{Store, StoreConfig};

pub struct NaiveStore {
    dir: PathBuf,
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    memory: HashMap<String, Bytes>,
    lru: VecDeque<String>,
    on_disk: HashSet<String>,
    memory_bytes: u64,
    spills: u64,
    reloads: u64,
}

impl NaiveStore {
    pub fn new(cfg: &StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        Ok(Self {
            dir: cfg.dir.clone(),
            budget: cfg.budget,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn path_of(&self, key: &str) -> PathBuf {
        let mut name = String::with_capacity(32);
        for salt in [0u8, 1] {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            key.hash(&mut h);
            name.push_str(&format!("{:016x}", h.finish()));
        }
        self.dir.join(name)
    }

    /// Spill least recently used values until the budget holds.
    fn evict(&self, inner: &mut Inner) -> Result<()> {
        while inner.memory_bytes > self.budget {
            let Some(victim) = inner.lru.pop_front() else {
                break;
            };
            let value = inner
                .memory
                .remove(&victim)
                .ok_or_else(|| anyhow!("naive: LRU queue and map disagree"))?;
            std::fs::write(self.path_of(&victim), &value).context("naive: writing spill file")?;
            inner.memory_bytes -= value.len() as u64;
            inner.on_disk.insert(victim);
            inner.spills += 1;
        }
        Ok(())
    }

    fn touch(inner: &mut Inner, key: &str) {
        if let Some(pos) = inner.lru.iter().rposition(|k| k == key) {
            if let Some(k) = inner.lru.remove(pos) {
                inner.lru.push_back(k);
            }
        }
    }
}

impl Store for NaiveStore {
    fn insert(&self, key: &str, value: Bytes) -> Result<()> {
        let mut guard = self.inner.lock().map_err(|_| anyhow!("naive: poisoned"))?;
        let inner = &mut *guard;
        let len = value.len() as u64;
        if let Some(old) = inner.memory.insert(key.to_owned(), value) {
            inner.memory_bytes -= old.len() as u64;
            Self::touch(inner, key);
        } else {
            if inner.on_disk.remove(key) {
                std::fs::remove_file(self.path_of(key)).context("naive: removing stale file")?;
            }
            inner.lru.push_back(key.to_owned());
        }
        inner.memory_bytes += len;
        self.evict(inner)
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut guard = self.inner.lock().map_err(|_| anyhow!("naive: poisoned"))?;
        let inner = &mut *guard;
        if let Some(value) = inner.memory.get(key) {
            let value = value.clone();
            Self::touch(inner, key);
            return Ok(Some(value));
        }
        if !inner.on_disk.remove(key) {
            return Ok(None);
        }
        let path = self.path_of(key);
        let value = Bytes::from(std::fs::read(&path).context("naive: reading spill file")?);
        std::fs::remove_file(&path).context("naive: removing reloaded file")?;
        inner.reloads += 1;
        inner.memory_bytes += value.len() as u64;
        inner.memory.insert(key.to_owned(), value.clone());
        inner.lru.push_back(key.to_owned());
        self.evict(inner)?;
        Ok(Some(value))
    }

    fn reloads(&self) -> Option<u64> {
        self.inner.lock().ok().map(|inner| inner.reloads)
    }

    fn notes(&self) -> String {
        match self.inner.lock() {
            Ok(inner) => format!(
                "in memory {}, on disk {}, spills {}, reloads {}",
                inner.memory.len(),
                inner.on_disk.len(),
                inner.spills,
                inner.reloads
            ),
            Err(_) => "poisoned".to_owned(),
        }
    }
}
