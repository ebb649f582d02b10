//! [`AsyncSpillStore`]: the store for tokio users, with every disk access
//! moved off the executor threads (feature `tokio`).
//!
//! Each async call first tries the operation in the shard's memory, on the
//! calling task, under the shard's lock, with no I/O: a memory hit is
//! served at once, with no task hop. Only what needs the disk goes to
//! tokio's blocking pool (`spawn_blocking`) and runs the synchronous call
//! there: a reload whose record is not in the page cache (or whose return
//! to memory must write a victim out), and an insert that must write a
//! value out (a victim without a disk copy, or a value larger than its
//! shard's share). A remove or replace that lets go of a spill record stays
//! inline: the record goes to the store's background thread, which drops it
//! (dropping the last record of a file deletes the file). See
//! [`AsyncSpillStore`] for which calls can still wait, and for how long.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;

use crate::shard::Probe;
use crate::{Error, Location, SpillStore, Stats};

/// A [`SpillStore`] for async code on tokio: memory hits, inserts that
/// fit and removes are served inline; reloads from disk and spills run on
/// tokio's blocking pool, so no future blocks its executor thread on disk
/// I/O.
///
/// Made by [`SpillStore::into_async`]. Cloning is cheap (an [`Arc`] of the
/// store); every clone is the same store, and the store is dropped (its
/// spill files deleted) with the last clone. It behaves exactly like the
/// synchronous store (same eviction order, same counters; one call is
/// counted once, whichever thread serves it), and [`store`](Self::store)
/// gives the synchronous handle for everything else (`keys`, `clear`,
/// `compact`, ...).
///
/// # What runs where
///
/// | call | inline, on the task | on the blocking pool |
/// |---|---|---|
/// | [`get`](Self::get) | value in memory, or absent; value on disk whose record the page cache holds (read with `preadv2(RWF_NOWAIT)`, which never waits for the disk), when bringing it back into memory needs no write | value on disk otherwise: the reload (and the spills that make room for it) |
/// | [`insert`](Self::insert) | room is made only by evicting values that keep a disk copy (no write); a disk record of the value replaced goes to the store's background thread to be dropped | a victim must be written, or the value is larger than its shard's share |
/// | [`remove`](Self::remove) | always; a disk record of the value removed goes to the store's background thread to be dropped | |
/// | all three | | the shard's lock is taken (see below) |
/// | `contains_key`, `location`, `len`, `stats` | always | never |
///
/// # What may still block, and for how long
///
/// Nothing inline waits for the disk (the one read it makes takes only what
/// the page cache holds), writes, punches or deletes a file, and the async
/// calls never block on a lock: they try the shard's lock up to 64 times,
/// spinning in between (a few microseconds at most; the store's write
/// sections are in-memory steps of about a microsecond), and a call that
/// still finds it taken goes to the blocking pool, like one that needs the
/// disk. (A holder preempted by the operating system, likely when the
/// blocking pool runs more threads than there are cores, holds the lock
/// for a scheduler time slice: milliseconds.) What remains on the executor
/// thread:
///
/// - the in-memory work itself: a hash lookup, for `insert` the eviction
///   walk over the victims it respills (O(victims)), and with
///   [`Builder::exact_lru`](crate::Builder::exact_lru) the replay of the
///   buffered hits when a write lock is taken (at most a buffer's worth);
/// - after the lock is released, freeing the memory of the values an
///   inline `insert` or `remove` took out (the replaced value, the
///   victims respilled): a `free` per value, for large values an `munmap`
///   system call, but no disk access; the spill records they let go of are
///   handed to the store's background thread (one uncontended lock, and
///   at most a futex wake-up when that thread sleeps), which drops them
///   within about 5 ms: until then their disk space stays taken (the next
///   write drops them first);
/// - the synchronous [`contains_key`](Self::contains_key),
///   [`location`](Self::location), [`len`](Self::len) and
///   [`stats`](Self::stats), which wait for a read lock (of one shard, or
///   of every shard in turn for `len` and `stats`) as the synchronous
///   store does: as long as a writer's in-memory section, typically well
///   under a microsecond, but the length of a time slice if the writer is
///   preempted.
///
/// Dropping the last clone drops the store, which deletes its spill files
/// on the dropping thread (and joins its compaction and spiller threads): in async code,
/// drop the last clone on the blocking pool, e.g.
/// `tokio::task::spawn_blocking(move || drop(store))`, or call
/// [`SpillStore::cleanup`] there.
///
/// Await the futures within a tokio runtime (any flavour): a call that
/// goes to the blocking pool uses `tokio::task::spawn_blocking`, which
/// panics outside one.
///
/// A call served inline returns without yielding, and does not use tokio's
/// cooperative budget: a task that loops over memory hits keeps its
/// worker until it awaits something else, like any loop of synchronous
/// work (`tokio::task::yield_now` between batches gives the worker back).
///
/// # Cancellation
///
/// Dropping a future before it completes cancels what has not started: an
/// inline step either ran completely or not at all. Work handed to the
/// blocking pool is not cancelled: an `insert` or `remove` dropped while it
/// waits for the pool still takes effect.
///
/// # Examples
///
/// ```
/// use spillstore::{Location, SpillStore};
///
/// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SpillStore::builder()
///     .max_size(100)
///     .dump_dir(dir.path())
///     .shards(1)
///     .build()?
///     .into_async();
/// for i in 0..20 {
///     store.insert(i.to_string(), vec![i as u8; 10]).await?; // spills on the blocking pool
/// }
/// assert_eq!(store.location("0"), Some(Location::File));
/// // Read back on the blocking pool, and brought back into memory.
/// assert_eq!(store.get("0").await?.as_deref(), Some(&[0u8; 10][..]));
/// assert_eq!(store.location("0"), Some(Location::Memory));
///
/// // Clones share the store: hand one to each task.
/// let task = tokio::spawn({
///     let store = store.clone();
///     async move { store.get("19").await }
/// });
/// assert_eq!(task.await.unwrap()?.unwrap().len(), 10);
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct AsyncSpillStore<K: Send + Sync = String> {
    store: Arc<SpillStore<K>>,
}

impl<K: Send + Sync> Clone for AsyncSpillStore<K> {
    /// Another handle on the same store (an `Arc` clone).
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new().into_async();
    /// let other = store.clone();
    /// assert!(std::ptr::eq(store.store(), other.store()));
    /// ```
    fn clone(&self) -> Self {
        AsyncSpillStore {
            store: Arc::clone(&self.store),
        }
    }
}

impl<K: Send + Sync> std::fmt::Debug for AsyncSpillStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AsyncSpillStore").field(&self.store).finish()
    }
}

impl<K> SpillStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// This store behind the async facade; see [`AsyncSpillStore`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert_eq!(store.get("k").await?.as_deref(), Some(&b"v"[..]));
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn into_async(self) -> AsyncSpillStore<K> {
        AsyncSpillStore {
            store: Arc::new(self),
        }
    }
}

impl<K> AsyncSpillStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// The synchronous store behind this handle, for the calls the facade
    /// does not wrap (`keys`, `clear`, `compact`, `quiesce`, ...). Its
    /// calls may do disk I/O on the calling thread: from async code, call
    /// those that may on the blocking pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert_eq!(store.store().keys(), ["k"]);
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &SpillStore<K> {
        &self.store
    }

    /// The value of `key`, or `None` if absent; as [`SpillStore::get`].
    ///
    /// A value in memory (or an absent key) is answered inline, without
    /// yielding; a value only on disk is read back, verified and brought
    /// back into memory on the blocking pool.
    ///
    /// # Errors
    ///
    /// Those of [`SpillStore::get`]; and [`Error::Io`] if the runtime shut
    /// down before the blocking pool ran the reload.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert_eq!(store.get("k").await?.as_deref(), Some(&b"v"[..]));
    /// assert_eq!(store.get("nope").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<Bytes>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'static,
        Q::Owned: Send,
    {
        Ok(self.get_with_location(key).await?.map(|(value, _)| value))
    }

    /// Like [`get`](Self::get), and also says where this call found the
    /// value: [`Location::File`] means it was read back from disk (on the
    /// blocking pool).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::Location;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// let (value, from) = store.get_with_location("k").await?.unwrap();
    /// assert_eq!((value.as_ref(), from), (&b"v"[..], Location::Memory));
    /// # Ok(()) }
    /// ```
    pub async fn get_with_location<Q>(&self, key: &Q) -> Result<Option<(Bytes, Location)>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'static,
        Q::Owned: Send,
    {
        let probe = self.store.get_resident(key);
        match probe {
            Probe::Resident(value) => Ok(Some((value, Location::Memory))),
            Probe::Absent => Ok(None),
            Probe::OnDisk => match self.store.reload_without_io(key) {
                Some(read) => read.map(|value| Some((value, Location::File))),
                None => {
                    let key = key.to_owned();
                    self.blocking(move |store| store.get_with_location(key.borrow()))
                        .await?
                }
            },
            Probe::Busy => {
                let key = key.to_owned();
                self.blocking(move |store| store.get_with_location(key.borrow()))
                    .await?
            }
        }
    }

    /// Stores `value` under `key`, replacing any previous value; as
    /// [`SpillStore::insert`].
    ///
    /// Inline when room can be made without a write: the value fits in
    /// memory once the least recently used values that keep an intact disk
    /// copy leave (a "respill"). Otherwise the insert runs on the blocking
    /// pool, where it writes the victims out; the victims respilled inline
    /// before that are the ones the synchronous insert evicts first, so the
    /// order of eviction is the same. A spill record of the value replaced
    /// goes to the store's background thread to be dropped, as in
    /// [`remove`](Self::remove).
    ///
    /// # Errors
    ///
    /// Those of [`SpillStore::insert`] (a value over a size limit fails
    /// inline); and [`Error::Io`] if the runtime shut down before the
    /// blocking pool ran the insert (the key is then not stored).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "first").await?;
    /// store.insert("k".to_string(), "second").await?;
    /// assert_eq!(store.get("k").await?.as_deref(), Some(&b"second"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn insert(&self, key: K, value: impl Into<Bytes>) -> Result<(), Error> {
        let given_back = self.store.insert_without_io(key, value.into())?;
        match given_back {
            None => Ok(()),
            Some((key, value)) => self.blocking(move |store| store.insert(key, value)).await?,
        }
    }

    /// Removes `key`; returns whether it was there. As
    /// [`SpillStore::remove`].
    ///
    /// Inline unless the shard's lock is taken (then on the blocking pool).
    /// A spill record it lets go of (the value was on disk, or had a disk
    /// copy) goes to the store's background thread to be dropped, since
    /// dropping the last record of a file deletes the file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the runtime shut down before the blocking pool ran
    /// the removal (the key then stays).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert!(store.remove("k").await?);
    /// assert!(!store.remove("k").await?);
    /// # Ok(()) }
    /// ```
    pub async fn remove<Q>(&self, key: &Q) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized + 'static,
        Q::Owned: Send,
    {
        if let Some(removed) = self.store.remove_without_io(key) {
            return Ok(removed);
        }
        let key = key.to_owned();
        self.blocking(move |store| store.remove(key.borrow()))
            .await?
    }

    /// Whether `key` is stored; as [`SpillStore::contains_key`]. Never
    /// touches a file.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert!(store.contains_key("k"));
    /// assert!(!store.contains_key("x"));
    /// # Ok(()) }
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.contains_key(key)
    }

    /// Where the value of `key` is now; as [`SpillStore::location`]. Never
    /// touches a file.
    ///
    /// # Examples
    ///
    /// ```
    /// use spillstore::Location;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("k".to_string(), "v").await?;
    /// assert_eq!(store.location("k"), Some(Location::Memory));
    /// # Ok(()) }
    /// ```
    pub fn location<Q>(&self, key: &Q) -> Option<Location>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.store.location(key)
    }

    /// Number of stored keys; as [`SpillStore::len`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("a".to_string(), "1").await?;
    /// assert_eq!(store.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no key is stored; as [`SpillStore::is_empty`].
    ///
    /// # Examples
    ///
    /// ```
    /// let store = spillstore::SpillStore::new().into_async();
    /// assert!(store.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Sizes and activity counters; as [`SpillStore::stats`]. A call
    /// served on the blocking pool is counted once, as the synchronous
    /// call would be.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), spillstore::Error> {
    /// let store = spillstore::SpillStore::new().into_async();
    /// store.insert("a".to_string(), vec![0u8; 5]).await?;
    /// store.get("a").await?;
    /// let stats = store.stats();
    /// assert_eq!((stats.memory_bytes, stats.hits), (5, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        self.store.stats()
    }

    /// Runs `call` on the synchronous store on tokio's blocking pool.
    /// A panic in it resumes here; a runtime that shut down before the
    /// pool ran it (so it never ran) is an [`Error::Io`].
    async fn blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&SpillStore<K>) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || call(&store)).await {
            Ok(result) => Ok(result),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        }
    }
}
