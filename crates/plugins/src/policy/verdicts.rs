//! Decisions that depend only on who calls, what they do and which route:
//! remembered per worker thread.
//!
//! When no policy that can apply to a request mentions `context`, Cedar's
//! answer is a function of the principal (the consumer: name, group,
//! labels), the action and the resource (the route: id, name, service,
//! labels) alone. Those come from the served config as shared values, so the
//! answer is kept for that exact consumer and route value (both held, so
//! their addresses cannot be reused by a later config) and this plugin
//! instance. A config change makes new values, and a miss.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use portcullis_core::request::RouteInfo;
use portcullis_core::Consumer;

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

type Key = (u64, usize, usize, http::Method);

struct Entry {
    route: Arc<RouteInfo>,
    consumer: Option<Arc<Consumer>>,
    verdict: Verdict,
}

thread_local! {
    static CACHE: RefCell<HashMap<Key, Entry>> = RefCell::new(HashMap::new());
}

/// The remembered verdict, or `decide`'s (remembered when it could be
/// made).
pub fn get_or_decide<E>(
    instance: u64,
    route: &Arc<RouteInfo>,
    consumer: Option<&Arc<Consumer>>,
    method: &http::Method,
    decide: impl FnOnce() -> Result<Verdict, E>,
) -> Result<Verdict, E> {
    let key = (
        instance,
        Arc::as_ptr(route) as usize,
        consumer.map_or(0, |c| Arc::as_ptr(c) as usize),
        method.clone(),
    );
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
