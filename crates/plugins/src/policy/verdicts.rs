//! Remembered decisions, per worker thread.
//!
//! Cedar's answer is a function of the principal (the consumer: name,
//! group, labels), the action, the resource (the route: id, name, service,
//! labels) and the context values the applicable policies read (named by
//! [`super::inputs`]). Principal and resource come from the served config
//! as shared values, so the answer is kept for that exact consumer and
//! route value (both held, so their addresses cannot be reused by a later
//! config), this plugin instance, the method and those context values. A
//! config change makes new values, and a miss.
//!
//! The cache is bounded in entries and each key in bytes
//! ([`super::inputs`]), so a caller varying what the policies read only
//! makes misses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use portcullis_core::request::RouteInfo;
use portcullis_core::Consumer;

use super::inputs::Input;

/// Entries per worker thread; the cache starts over when full.
const CAPACITY: usize = 4096;

/// A number for each policy plugin instance, never reused.
pub fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What Cedar decided and why, as the decision record says it.
#[derive(Clone)]
pub struct Verdict {
    pub allow: bool,
    pub reason: Arc<str>,
}

/// What a verdict depends on.
#[derive(PartialEq, Eq, Hash)]
pub struct Key {
    instance: u64,
    route: usize,
    consumer: usize,
    method: http::Method,
    inputs: Vec<Input>,
}

impl Key {
    pub fn new(
        instance: u64,
        route: &Arc<RouteInfo>,
        consumer: Option<&Arc<Consumer>>,
        method: &http::Method,
        inputs: Vec<Input>,
    ) -> Key {
        Key {
            instance,
            route: Arc::as_ptr(route) as usize,
            consumer: consumer.map_or(0, |c| Arc::as_ptr(c) as usize),
            method: method.clone(),
            inputs,
        }
    }
}

struct Entry {
    route: Arc<RouteInfo>,
    consumer: Option<Arc<Consumer>>,
    verdict: Verdict,
}

thread_local! {
    static CACHE: RefCell<HashMap<Key, Entry>> = RefCell::new(HashMap::new());
}

/// The remembered verdict for `key` (made with these `route` and
/// `consumer` values), or `decide`'s (remembered when it could be made).
pub fn get_or_decide<E>(
    key: Key,
    route: &Arc<RouteInfo>,
    consumer: Option<&Arc<Consumer>>,
    decide: impl FnOnce() -> Result<Verdict, E>,
) -> Result<Verdict, E> {
    let hit = CACHE.with(|c| {
        c.borrow().get(&key).and_then(|e| {
            let same = Arc::ptr_eq(&e.route, route)
                && match (&e.consumer, consumer) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
            same.then(|| e.verdict.clone())
        })
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let verdict = decide()?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CAPACITY {
            c.clear();
        }
        c.insert(
            key,
            Entry {
                route: route.clone(),
                consumer: consumer.cloned(),
                verdict: verdict.clone(),
            },
        );
    });
    Ok(verdict)
}
