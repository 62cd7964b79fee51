//! Versioned, immutable policy snapshots: published by the control side, adopted by
//! each worker at a batch boundary (T3).
//!
//! In normal builds the cell is an [`arc_swap::ArcSwap`]: publishing is a pointer swap
//! that never waits for a reader, and each worker reads through its own
//! [`arc_swap::Cache`] (about a nanosecond when nothing changed), once per batch.
//!
//! arc-swap is not loom-instrumented, so under `--cfg qos_loom` the cell is a stand-in
//! with the same contract built from the `sync` facade: a generation counter the
//! publisher bumps with `Release` after storing the snapshot, read by the worker with
//! `Acquire`. The loom models check our adoption protocol on it (a worker adopts whole
//! versions only, in publication order, and the newest one once it looks after the
//! publication); the real arc-swap path is covered by ordinary multi-threaded tests.

#[cfg(not(qos_loom))]
mod imp {
    use std::sync::Arc;

    use arc_swap::{ArcSwap, Cache};

    /// Where the current snapshot lives.
    #[derive(Debug)]
    pub struct SnapshotCell<T> {
        swap: Arc<ArcSwap<T>>,
    }

    /// One worker's view of a [`SnapshotCell`].
    pub struct SnapshotReader<T> {
        cache: Cache<Arc<ArcSwap<T>>, Arc<T>>,
    }

    impl<T> std::fmt::Debug for SnapshotReader<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SnapshotReader")
        }
    }

    impl<T> SnapshotCell<T> {
        /// A cell holding `first`.
        pub fn new(first: Arc<T>) -> Self {
            Self {
                swap: Arc::new(ArcSwap::new(first)),
            }
        }

        /// Makes `next` the current snapshot. Never waits for a reader.
        pub fn publish(&self, next: Arc<T>) {
            self.swap.store(next);
        }

        /// The current snapshot.
        pub fn current(&self) -> Arc<T> {
            self.swap.load_full()
        }

        /// A reader for one worker.
        pub fn reader(&self) -> SnapshotReader<T> {
            SnapshotReader {
                cache: Cache::new(self.swap.clone()),
            }
        }
    }

    impl<T> SnapshotReader<T> {
        /// The newest snapshot (cheap when it did not change).
        #[inline]
        pub fn load(&mut self) -> &Arc<T> {
            self.cache.load()
        }
    }
}

#[cfg(qos_loom)]
mod imp {
    use super::super::sync::{Arc, AtomicU64, Ordering};
    use loom::sync::Mutex;

    /// Where the current snapshot lives (loom stand-in for arc-swap).
    #[derive(Debug)]
    pub struct SnapshotCell<T> {
        shared: Arc<Shared<T>>,
    }

    #[derive(Debug)]
    struct Shared<T> {
        generation: AtomicU64,
        current: Mutex<std::sync::Arc<T>>,
    }

    /// One worker's view of a [`SnapshotCell`].
    #[derive(Debug)]
    pub struct SnapshotReader<T> {
        shared: Arc<Shared<T>>,
        seen: u64,
        cached: std::sync::Arc<T>,
    }

    impl<T> SnapshotCell<T> {
        /// A cell holding `first`.
        pub fn new(first: std::sync::Arc<T>) -> Self {
            Self {
                shared: Arc::new(Shared {
                    generation: AtomicU64::new(0),
                    current: Mutex::new(first),
                }),
            }
        }

        /// Makes `next` the current snapshot.
        pub fn publish(&self, next: std::sync::Arc<T>) {
            *self.shared.current.lock().expect("loom mutex") = next;
            // Release: partner of the reader's Acquire load of the generation.
            self.shared.generation.fetch_add(1, Ordering::Release);
        }

        /// The current snapshot.
        pub fn current(&self) -> std::sync::Arc<T> {
            self.shared.current.lock().expect("loom mutex").clone()
        }

        /// A reader for one worker.
        pub fn reader(&self) -> SnapshotReader<T> {
            let seen = self.shared.generation.load(Ordering::Acquire);
            let cached = self.current();
            SnapshotReader {
                shared: self.shared.clone(),
                seen,
                cached,
            }
        }
    }

    impl<T> SnapshotReader<T> {
        /// The newest snapshot.
        pub fn load(&mut self) -> &std::sync::Arc<T> {
            // Acquire: partner of the publisher's Release increment.
            let g = self.shared.generation.load(Ordering::Acquire);
            if g != self.seen {
                self.seen = g;
                self.cached = self.shared.current.lock().expect("loom mutex").clone();
            }
            &self.cached
        }
    }
}

pub use imp::{SnapshotCell, SnapshotReader};
