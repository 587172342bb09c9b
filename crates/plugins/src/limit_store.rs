//! Local counter storage for the limit plugins: a map from limit key to a
//! small state, split into shards by key hash so that requests for
//! different keys rarely wait on one lock. Each update happens under its
//! shard's lock, which makes check-and-count atomic (N concurrent requests
//! against a quota of M admit exactly M).
//!
//! The map is bounded: entries that no longer hold anything (a drained
//! bucket, an expired window) are swept out as the shard is used, and a
//! shard that is still full after a sweep drops an entry to make room.
//!
//! Time comes from a [`Clock`], so tests can move it by hand.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Monotonic time since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to.
#[cfg(test)]
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A counter state that knows when it has nothing left to remember.
pub trait Expiring {
    fn expired(&self, now: Duration) -> bool;
}

const SHARDS: usize = 64;
/// At most this many keys per shard (about a million in all).
const SHARD_CAPACITY: usize = 16 * 1024;
/// A shard is swept after this many updates at least, and never more often
/// than once per as many updates as it has entries, so sweeping costs O(1)
/// per request on average.
const MIN_SWEEP_INTERVAL: usize = 1024;

pub struct Buckets<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: std::collections::hash_map::RandomState,
    clock: Arc<dyn Clock>,
}

struct Shard<V> {
    map: HashMap<Box<str>, V>,
    updates: usize,
}

impl<V: Expiring> Default for Buckets<V> {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock::default()))
    }
}

impl<V: Expiring> Buckets<V> {
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Buckets {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        updates: 0,
                    })
                })
                .collect(),
            hasher: Default::default(),
            clock,
        }
    }

    /// Run `update` on the state of `key` (made by `fresh` when absent or
    /// expired) under the key's shard lock, and return its answer.
    pub fn update<R>(
        &self,
        key: &str,
        fresh: impl FnOnce(Duration) -> V,
        update: impl FnOnce(&mut V, Duration) -> R,
    ) -> R {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        shard.updates += 1;
        if shard.updates >= MIN_SWEEP_INTERVAL.max(shard.map.len()) {
            shard.updates = 0;
            shard.map.retain(|_, v| !v.expired(now));
        }
        if let Some(v) = shard.map.get_mut(key) {
            if v.expired(now) {
                *v = fresh(now);
            }
            return update(v, now);
        }
        if shard.map.len() >= SHARD_CAPACITY {
            shard.map.retain(|_, v| !v.expired(now));
            if shard.map.len() >= SHARD_CAPACITY {
                // Still full of live keys: forget one rather than grow
                // without bound. That key starts afresh.
                if let Some(victim) = shard.map.keys().next().cloned() {
                    shard.map.remove(&victim);
                }
            }
        }
        let v = shard.map.entry(key.into()).or_insert_with(|| fresh(now));
        update(v, now)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Until(Duration);
    impl Expiring for Until {
        fn expired(&self, now: Duration) -> bool {
            now >= self.0
        }
    }

    #[test]
    fn expired_entries_are_swept_as_the_map_is_used() {
        let clock = Arc::new(ManualClock::default());
        let buckets: Buckets<Until> = Buckets::with_clock(clock.clone());
        let ttl = |now| Until(now + Duration::from_secs(1));
        for i in 0..2000 {
            buckets.update(&format!("old{i}"), ttl, |_, _| ());
        }
        assert_eq!(buckets.len(), 2000);
        clock.advance(Duration::from_secs(2));
        // Enough new traffic that every shard passes its sweep interval.
        let fresh_keys = SHARDS * MIN_SWEEP_INTERVAL * 3 / 2;
        for i in 0..fresh_keys {
            buckets.update(&format!("new{i}"), ttl, |_, _| ());
        }
        assert_eq!(buckets.len(), fresh_keys);
    }

    #[test]
    fn an_expired_entry_is_replaced_by_a_fresh_one() {
        let clock = Arc::new(ManualClock::default());
        let buckets: Buckets<Until> = Buckets::with_clock(clock.clone());
        let first = buckets.update("k", |now| Until(now + Duration::from_secs(1)), |v, _| v.0);
        clock.advance(Duration::from_secs(1));
        let second = buckets.update("k", |now| Until(now + Duration::from_secs(1)), |v, _| v.0);
        assert_eq!(second - first, Duration::from_secs(1));
    }
}
