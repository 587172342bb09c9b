//! Tokens this worker thread verified recently, so that a client sending
//! the same token on every request pays for one signature check rather
//! than one per request (an ES256 verification costs several times a
//! whole proxied request).
//!
//! Only tokens verified against a consumer credential are kept, and an
//! entry is used only by the plugin instance that made it, against the very
//! consumer index (credentials) it was verified with: an edited credential
//! or route setting means a new index or instance, and a miss. Each entry
//! also keeps the token's time window (exp, nbf and leeway) and lives at
//! most [`MAX_AGE_SECS`]. Lookups hash the token with a per-thread random
//! key and compare it in constant time, so the cache gives no timing
//! oracle on the tokens it holds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use rustc_hash::FxBuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use portcullis_core::{Consumer, ConsumerIndex};
use subtle::ConstantTimeEq;

/// Entries per worker thread; the cache starts over when full.
const CAPACITY: usize = 4096;
/// However long the token is valid, an entry is re-verified after this.
pub(crate) const MAX_AGE_SECS: u64 = 60;

/// A number for each jwt-auth plugin instance, never reused (an address
/// could be, after a reload frees the old instance).
pub(crate) fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Who a cached token authenticated.
#[derive(Clone)]
pub(crate) struct Verified {
    pub consumer: Arc<Consumer>,
    pub credential_id: Option<Arc<str>>,
}

struct Entry {
    instance: u64,
    /// Held, so its address cannot be reused by a later index.
    index: Arc<ConsumerIndex>,
    token: Box<[u8]>,
    /// Unix seconds: usable while `valid_from <= now < valid_until`.
    valid_from: u64,
    valid_until: u64,
    verified: Verified,
}

struct Cache {
    key: RandomState,
    /// Keyed by the token's keyed hash, which is random already: no need
    /// to hash it again.
    entries: HashMap<u64, Entry, FxBuildHasher>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        key: RandomState::new(),
        entries: HashMap::default(),
    });
}

/// The identity `token` authenticated for this instance and index, if it
/// was verified here and is still within its window.
pub(crate) fn get(
    instance: u64,
    index: &Arc<ConsumerIndex>,
    token: &str,
    now: u64,
) -> Option<Verified> {
    CACHE.with(|c| {
        let c = c.borrow();
        let e = c.entries.get(&slot(&c.key, instance, token))?;
        let usable = e.instance == instance
            && Arc::ptr_eq(&e.index, index)
            && same_bytes(&e.token, token.as_bytes())
            && e.valid_from <= now
            && now < e.valid_until;
        usable.then(|| e.verified.clone())
    })
}

/// Remember a token that passed every check at `now`. `valid_from` and
/// `valid_until` are its nbf and exp with the leeway applied (unix
/// seconds), when it has them.
pub(crate) fn put(
    instance: u64,
    index: &Arc<ConsumerIndex>,
    token: &str,
    now: u64,
    valid_from: Option<u64>,
    valid_until: Option<u64>,
    verified: Verified,
) {
    let valid_until = valid_until
        .unwrap_or(u64::MAX)
        .min(now.saturating_add(MAX_AGE_SECS));
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.entries.len() >= CAPACITY {
            c.entries.clear();
        }
        let slot = slot(&c.key, instance, token);
        c.entries.insert(
            slot,
            Entry {
                instance,
                index: index.clone(),
                token: token.as_bytes().into(),
                valid_from: valid_from.unwrap_or(0),
                valid_until,
                verified,
            },
        );
    });
}

/// Constant-time equality, eight bytes at a time. `subtle` compares a slice
/// byte by byte behind an optimisation barrier per byte, which costs more
/// than the rest of a cache hit for a 200-byte token; here the barrier is
/// on the folded difference, which every byte goes into unconditionally.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_rest) = a.as_chunks::<8>();
    let (b_words, b_rest) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in a_words.iter().zip(b_words) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= u64::from(x ^ y);
    }
    bool::from(diff.ct_eq(&0))
}

fn slot(key: &RandomState, instance: u64, token: &str) -> u64 {
    key.hash_one((instance, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Verified {
        Verified {
            consumer: Arc::new(Consumer {
                username: name.into(),
                group_id: None,
                labels: Default::default(),
            }),
            credential_id: None,
        }
    }

    #[test]
    fn a_token_is_found_only_by_its_instance_index_and_window() {
        let index = Arc::new(ConsumerIndex::default());
        let other_index = Arc::new(ConsumerIndex::default());
        put(7, &index, "a.b.c", 1000, None, Some(1030), who("jack"));
        let hit = get(7, &index, "a.b.c", 1010).expect("cached");
        assert_eq!(&*hit.consumer.username, "jack");
        assert!(get(8, &index, "a.b.c", 1010).is_none(), "another instance");
        assert!(
            get(7, &other_index, "a.b.c", 1010).is_none(),
            "other credentials"
        );
        assert!(get(7, &index, "a.b.d", 1010).is_none(), "another token");
        assert!(get(7, &index, "a.b.c", 1030).is_none(), "expired");
        // nbf (less the leeway) a little ahead, as a clock skew allows.
        put(7, &index, "n.b.f", 1000, Some(1010), None, who("jill"));
        assert!(get(7, &index, "n.b.f", 1005).is_none(), "not yet valid");
        assert!(get(7, &index, "n.b.f", 1010).is_some());
        assert!(
            get(7, &index, "n.b.f", 1000 + MAX_AGE_SECS).is_none(),
            "re-verified after the maximum age"
        );
    }

    #[test]
    fn same_bytes_tells_every_position_and_length_apart() {
        let token: Vec<u8> = (0..203u8).collect();
        assert!(same_bytes(&token, &token.clone()));
        assert!(!same_bytes(&token, &token[..202]));
        assert!(same_bytes(b"", b""));
        for at in [0, 7, 8, 100, 199, 200, 202] {
            let mut other = token.clone();
            other[at] ^= 0x80;
            assert!(!same_bytes(&token, &other), "a difference at byte {at}");
        }
    }
}
