//! A response cache for the aggregate routes, so that the dashboard's overview answers in
//! milliseconds over a lake of millions of spans.
//!
//! An answer is fresh for `ttl`, or for five times what it took to compute if that is longer
//! (an answer that scans ten million spans for twenty seconds is not recomputed every five);
//! after that, and up to `max_stale`, the cached answer is served at once while one
//! background task recomputes it (stale-while-revalidate), so a page that polls never waits
//! for a scan once it has loaded. Background recomputations run on a runtime of their own
//! with one thread, so that they never take the cores that answer requests. Past `max_stale`
//! the request computes the answer itself. Keys are the route and its query string, so every role sees
//! the same aggregate (aggregates are the same for every role that may read them).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    /// How long the answer stays fresh.
    fresh_for: Duration,
    value: Arc<Value>,
    refreshing: bool,
}

/// An answer stays fresh for at least this many times what it took to compute.
const FRESH_PER_COMPUTE: u32 = 5;

/// The runtime of background recomputations: one thread, started on first use.
fn refresher() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("runledger-refresh")
            .enable_all()
            .build()
            .expect("the cache's refresh runtime starts")
    })
}

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    ttl: Duration,
    max_stale: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Most entries kept; past this the oldest are dropped.
const MAX_ENTRIES: usize = 512;

impl ResponseCache {
    /// A cache whose answers are fresh for `ttl` and served stale up to `max_stale`.
    pub fn new(ttl: Duration, max_stale: Duration) -> Self {
        Self {
            ttl,
            max_stale: max_stale.max(ttl),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets every answer: the next request computes afresh (after a bulk load, say).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn insert(&self, key: String, value: Arc<Value>, took: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                at: Instant::now(),
                fresh_for: self.ttl.max(took * FRESH_PER_COMPUTE),
                value,
                refreshing: false,
            },
        );
    }

    /// The answer for `key`: cached when fresh, cached and refreshed in the background when
    /// stale, else computed now.
    pub async fn get_or_compute<E, F, Fut>(
        self: &Arc<Self>,
        key: String,
        compute: F,
    ) -> Result<Arc<Value>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: Send + 'static,
    {
        if self.ttl.is_zero() {
            return compute().await.map(Arc::new);
        }
        let cached = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get_mut(&key) {
                Some(entry) if entry.at.elapsed() < entry.fresh_for => {
                    return Ok(Arc::clone(&entry.value))
                }
                Some(entry) if entry.at.elapsed() < self.max_stale.max(entry.fresh_for) => {
                    let start_refresh = !entry.refreshing;
                    entry.refreshing = true;
                    Some((Arc::clone(&entry.value), start_refresh))
                }
                _ => None,
            }
        };
        match cached {
            Some((value, start_refresh)) => {
                if start_refresh {
                    let cache = Arc::clone(self);
                    let work = compute();
                    refresher().spawn(async move {
                        let started = Instant::now();
                        match work.await {
                            Ok(fresh) => cache.insert(key, Arc::new(fresh), started.elapsed()),
                            Err(_) => {
                                let mut entries =
                                    cache.entries.lock().unwrap_or_else(|e| e.into_inner());
                                if let Some(entry) = entries.get_mut(&key) {
                                    entry.refreshing = false;
                                }
                            }
                        }
                    });
                }
                Ok(value)
            }
            None => {
                let started = Instant::now();
                let value = Arc::new(compute().await?);
                self.insert(key, Arc::clone(&value), started.elapsed());
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn fresh_then_stale_then_refreshed() {
        let cache = Arc::new(ResponseCache::new(
            Duration::from_millis(0) + Duration::from_nanos(1),
            Duration::from_secs(60),
        ));
        let calls = Arc::new(AtomicU32::new(0));
        let compute = |calls: Arc<AtomicU32>| {
            move || async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(Value::from(n))
            }
        };
        let first = cache
            .get_or_compute("k".into(), compute(calls.clone()))
            .await
            .unwrap();
        assert_eq!(*first, Value::from(0));
        // Make it stale, whatever the clock did: served the old value while a refresh runs.
        {
            let mut entries = cache.entries.lock().unwrap();
            let entry = entries.get_mut("k").unwrap();
            entry.at -= Duration::from_secs(1);
        }
        let second = cache
            .get_or_compute("k".into(), compute(calls.clone()))
            .await
            .unwrap();
        assert_eq!(*second, Value::from(0));
        // The refresh runs on the refresh runtime; wait for it through the cache itself.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cache.entries.lock().unwrap()["k"].value.as_u64() == Some(1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the background refresh never landed"
            );
            std::thread::yield_now();
        }
    }
}
