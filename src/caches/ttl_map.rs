//! The expiring map behind each of the caches, loading each missing key once at a time.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::oneshot;

use super::make_room;

/// Resolves (with an error, the sender being dropped) when a load under way ends.
type LoadEnded = Shared<oneshot::Receiver<()>>;

/// A map whose entries expire `ttl` after they were loaded; `ttl` zero keeps nothing.
///
/// Requests that miss a key while it is being loaded wait for that load instead of making their
/// own: when a hot conversation's copy expires under load, one read goes to MongoDB, not one per
/// request in flight. A waiter whose load ended without a copy to show for it (nothing found, an
/// error, a forget meanwhile, the loading request gone) loads for itself.
pub(super) struct TtlMap<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    loading: Mutex<HashMap<K, LoadEnded>>,
    forgets: AtomicU64,
    ttl: Duration,
    max_entries: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks a key's load as ended however the loading request ends, completed or dropped.
struct Loading<'a, K: Eq + Hash, V> {
    map: &'a TtlMap<K, V>,
    key: &'a K,
    _ended: oneshot::Sender<()>,
}

impl<K: Eq + Hash, V> Drop for Loading<'_, K, V> {
    fn drop(&mut self) {
        lock(&self.map.loading).remove(self.key);
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    pub(super) fn new(ttl: Duration, max_entries: usize) -> Self {
        Self { entries: Mutex::default(), loading: Mutex::default(), forgets: AtomicU64::new(0), ttl, max_entries }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, (Instant, V)>> {
        lock(&self.entries)
    }

    fn fresh(&self, key: &K) -> Option<V> {
        let entries = self.entries();
        let (loaded, value) = entries.get(key)?;
        (loaded.elapsed() < self.ttl).then(|| value.clone())
    }

    pub(super) async fn get_or_load<E>(
        &self,
        key: &K,
        load: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
        if self.ttl.is_zero() {
            return load.await;
        }
        if let Some(value) = self.fresh(key) {
            return Ok(Some(value));
        }
        let under_way = {
            let mut loading = lock(&self.loading);
            match loading.get(key) {
                Some(ended) => Err(ended.clone()),
                None => {
                    let (ended, on_end) = oneshot::channel();
                    loading.insert(key.clone(), on_end.shared());
                    Ok(Loading { map: self, key, _ended: ended })
                }
            }
        };
        let _loading = match under_way {
            Ok(loading) => Some(loading),
            Err(ended) => {
                let _ = ended.await;
                if let Some(value) = self.fresh(key) {
                    return Ok(Some(value));
                }
                None
            }
        };
        let now = Instant::now();
        let forgets = self.forgets.load(Ordering::Acquire);
        let loaded = load.await?;
        let mut entries = self.entries();
        match &loaded {
            Some(value) if self.forgets.load(Ordering::Acquire) == forgets => {
                make_room(&mut entries, self.max_entries, |(at, _)| now.duration_since(*at) < self.ttl);
                entries.insert(key.clone(), (now, value.clone()));
            }
            _ => {
                entries.remove(key);
            }
        }
        Ok(loaded)
    }

    pub(super) fn forget(&self, key: &K) {
        let mut entries = self.entries();
        self.forgets.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn map(ttl_ms: u64) -> TtlMap<u32, String> {
        TtlMap::new(Duration::from_millis(ttl_ms), 2)
    }

    async fn load(map: &TtlMap<u32, String>, key: u32, value: &str) -> Option<String> {
        let value = value.to_string();
        map.get_or_load(&key, async move { Ok::<_, ()>(Some(value)) }).await.unwrap()
    }

    #[tokio::test]
    async fn keeps_a_copy_until_it_is_forgotten() {
        let map = map(60_000);
        assert_eq!(load(&map, 1, "a").await.as_deref(), Some("a"));
        assert_eq!(load(&map, 1, "b").await.as_deref(), Some("a"));
        map.forget(&1);
        assert_eq!(load(&map, 1, "c").await.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn copies_expire_and_a_zero_ttl_keeps_nothing() {
        let map = map(1);
        load(&map, 1, "a").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(load(&map, 1, "b").await.as_deref(), Some("b"));
        let off = map_with_ttl_zero();
        load(&off, 1, "a").await;
        assert_eq!(load(&off, 1, "b").await.as_deref(), Some("b"));
    }

    fn map_with_ttl_zero() -> TtlMap<u32, String> {
        TtlMap::new(Duration::ZERO, 2)
    }

    #[tokio::test]
    async fn a_copy_loaded_across_a_forget_is_not_kept() {
        let map = map(60_000);
        let loaded = map
            .get_or_load(&1, async {
                map.forget(&1);
                Ok::<_, ()>(Some("stale".to_string()))
            })
            .await
            .unwrap();
        assert_eq!(loaded.as_deref(), Some("stale"));
        assert_eq!(load(&map, 1, "fresh").await.as_deref(), Some("fresh"));
    }

    #[tokio::test]
    async fn stays_within_its_size() {
        let map = map(60_000);
        for key in 0..5 {
            load(&map, key, "v").await;
        }
        assert!(map.entries().len() <= 2);
    }

    /// `n` requests missing key 1 at once, each load taking 20 ms to find `value`: what they
    /// got, and how many loads were made.
    async fn misses_at_once(map: &TtlMap<u32, String>, n: usize, value: Option<&str>) -> (Vec<Option<String>>, usize) {
        let loads = AtomicUsize::new(0);
        let get = || {
            map.get_or_load(&1, async {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, ()>(value.map(str::to_string))
            })
        };
        let got = futures_util::future::join_all((0..n).map(|_| get())).await;
        (got.into_iter().map(Result::unwrap).collect(), loads.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn keys_missed_at_once_are_loaded_once() {
        let map = map(60_000);
        let (got, loads) = misses_at_once(&map, 10, Some("a")).await;
        assert!(got.iter().all(|g| g.as_deref() == Some("a")), "{got:?}");
        assert_eq!(loads, 1);
        assert!(lock(&map.loading).is_empty());
    }

    #[tokio::test]
    async fn waiters_load_for_themselves_when_a_load_leaves_no_copy() {
        // No copy is kept of an absence: each request finds it out itself.
        let (got, loads) = misses_at_once(&map(60_000), 5, None).await;
        assert!(got.iter().all(Option::is_none), "{got:?}");
        assert_eq!(loads, 5);
    }

    #[tokio::test]
    async fn an_abandoned_load_lets_its_waiters_go_on() {
        let map = map(60_000);
        let slow = map.get_or_load(&1, async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, ()>(Some("never".to_string()))
        });
        let waiter = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            load(&map, 1, "mine").await
        };
        // The slow load's request goes away after 50 ms.
        let (abandoned, got) = tokio::join!(tokio::time::timeout(Duration::from_millis(50), slow), waiter);
        assert!(abandoned.is_err());
        assert_eq!(got.as_deref(), Some("mine"));
        assert!(lock(&map.loading).is_empty());
    }
}
