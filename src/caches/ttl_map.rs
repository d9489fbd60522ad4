//! The expiring map behind each of the caches, loading each missing key once at a time.

use std::collections::{HashMap, HashSet};
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

/// A copy this far into its `ttl` (in quarters) is loaded again by the first request that finds
/// it while no load of it is under way; the others go on using the copy meanwhile.
const REFRESH_AFTER_QUARTERS: u32 = 3;

/// A map whose entries expire `ttl` after they were loaded; `ttl` zero keeps nothing.
///
/// Requests that miss a key while it is being loaded wait for that load instead of making their
/// own: when a hot conversation's copy expires under load, one read goes to MongoDB, not one per
/// request in flight. A waiter whose load ended without a copy to show for it (nothing found, an
/// error, a forget meanwhile, the loading request gone) loads for itself.
///
/// A key in steady use does not expire at all: once its copy is `REFRESH_AFTER_QUARTERS` into its
/// `ttl`, it is loaded again while requests keep being served the copy, which is still within its
/// `ttl`. Without that, every request for a busy key waited on a MongoDB read every `ttl`, and a
/// database hiccup at that moment held up all of them at once. A map made `refreshed_behind`
/// leaves that load to a refresher (`refresh`), which takes the keys found due (`take_due`) and
/// loads them many to a query; any other map has the first request that finds the copy due load
/// it.
pub(super) struct TtlMap<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    loading: Mutex<HashMap<K, LoadEnded>>,
    /// Keys whose copies requests found due, for the refresher; `None`: requests refresh.
    due: Option<Mutex<HashSet<K>>>,
    forgets: AtomicU64,
    ttl: Duration,
    max_entries: usize,
}

/// Keys taken for a refresh, and what `keep_refreshed` needs to tell that a change was forgotten
/// while they were being loaded.
pub(super) struct Due<K> {
    pub(super) keys: Vec<K>,
    forgets: u64,
    taken: Instant,
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
        Self {
            entries: Mutex::default(),
            loading: Mutex::default(),
            due: None,
            forgets: AtomicU64::new(0),
            ttl,
            max_entries,
        }
    }

    /// A map whose due copies a refresher loads (`take_due`, `keep_refreshed`), not requests.
    pub(super) fn refreshed_behind(ttl: Duration, max_entries: usize) -> Self {
        Self { due: Some(Mutex::default()), ..Self::new(ttl, max_entries) }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, (Instant, V)>> {
        lock(&self.entries)
    }

    fn fresh(&self, key: &K) -> Option<V> {
        self.copy(key).map(|(value, _)| value)
    }

    /// The key's copy within its `ttl`, and whether it is due to be loaded again.
    fn copy(&self, key: &K) -> Option<(V, bool)> {
        let entries = self.entries();
        let (loaded, value) = entries.get(key)?;
        let age = loaded.elapsed();
        (age < self.ttl).then(|| (value.clone(), age >= self.ttl / 4 * REFRESH_AFTER_QUARTERS))
    }

    /// Marks the key as being loaded by the caller, or says how to wait for the load under way.
    fn start_loading<'a>(&'a self, key: &'a K) -> Result<Loading<'a, K, V>, LoadEnded> {
        let mut loading = lock(&self.loading);
        match loading.get(key) {
            Some(ended) => Err(ended.clone()),
            None => {
                let (ended, on_end) = oneshot::channel();
                loading.insert(key.clone(), on_end.shared());
                Ok(Loading { map: self, key, _ended: ended })
            }
        }
    }

    pub(super) async fn get_or_load<E>(
        &self,
        key: &K,
        load: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
        if self.ttl.is_zero() {
            return load.await;
        }
        if let Some((copy, due)) = self.copy(key) {
            if let (true, Some(queue)) = (due, &self.due) {
                let mut queue = lock(queue);
                if queue.len() < self.max_entries {
                    queue.insert(key.clone());
                }
                return Ok(Some(copy));
            }
            let Some(_loading) = due.then(|| self.start_loading(key).ok()).flatten() else {
                return Ok(Some(copy));
            };
            // A refresh that fails serves the copy while it is still kept (a change forgets it).
            return match self.load_and_keep(key, load).await {
                Err(e) => self.fresh(key).map(Some).ok_or(e),
                loaded => loaded,
            };
        }
        let _loading = match self.start_loading(key) {
            Ok(loading) => Some(loading),
            Err(ended) => {
                let _ = ended.await;
                if let Some(value) = self.fresh(key) {
                    return Ok(Some(value));
                }
                None
            }
        };
        self.load_and_keep(key, load).await
    }

    /// Runs `load` and keeps what it found, unless the key was forgotten meanwhile.
    async fn load_and_keep<E>(
        &self,
        key: &K,
        load: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
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

    /// The keys requests found due since the last call (none for a map refreshed by requests).
    pub(super) fn take_due(&self) -> Due<K> {
        let keys = self.due.as_ref().map(|queue| lock(queue).drain().collect()).unwrap_or_default();
        Due { keys, forgets: self.forgets.load(Ordering::Acquire), taken: Instant::now() }
    }

    /// Keeps what a refresh of `due` found: a copy for `Some`, none for `None` (gone, or no longer
    /// to be served). Keys left out (their load failed) keep their copies until their `ttl`. If
    /// anything was forgotten since the keys were taken, nothing is kept: what was loaded may
    /// predate the change, and the next request finding a copy due marks it again.
    pub(super) fn keep_refreshed(&self, due: &Due<K>, found: Vec<(K, Option<V>)>) -> usize {
        let mut entries = self.entries();
        if self.forgets.load(Ordering::Acquire) != due.forgets {
            return 0;
        }
        let kept = found.len();
        for (key, value) in found {
            // A copy loaded by a request after the keys were taken is newer than this one.
            if entries.get(&key).is_some_and(|(at, _)| *at > due.taken) {
                continue;
            }
            match value {
                Some(value) => {
                    make_room(&mut entries, self.max_entries, |(at, _)| due.taken.duration_since(*at) < self.ttl);
                    entries.insert(key, (due.taken, value));
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
        kept
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

    /// `map` (with a one-second `ttl`) holding "old" for key 1, 800 ms into it: due for a refresh.
    async fn holding_a_due_copy(map: TtlMap<u32, String>) -> TtlMap<u32, String> {
        load(&map, 1, "old").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        map
    }

    async fn due_for_refresh() -> TtlMap<u32, String> {
        holding_a_due_copy(map(1_000)).await
    }

    #[tokio::test]
    async fn a_copy_in_use_is_loaded_again_before_it_expires_while_the_others_are_served_it() {
        let map = due_for_refresh().await;
        let loads = AtomicUsize::new(0);
        let refresh = map.get_or_load(&1, async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(Some("new".to_string()))
        });
        let others = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(
                    map.get_or_load(&1, async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, ()>(Some("other".to_string()))
                    })
                    .await
                    .unwrap(),
                );
            }
            got
        };
        let (refreshed, others) = tokio::join!(refresh, others);
        assert_eq!(refreshed.unwrap().as_deref(), Some("new"), "the first request past 3/4 of the ttl loads");
        assert!(others.iter().all(|o| o.as_deref() == Some("old")), "the rest use the copy meanwhile: {others:?}");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(map.fresh(&1).as_deref(), Some("new"));
        assert!(map.copy(&1).is_some_and(|(_, due)| !due), "the new copy starts a ttl of its own");
    }

    #[tokio::test]
    async fn a_failed_refresh_serves_the_copy_unless_it_was_forgotten_meanwhile() {
        let map = due_for_refresh().await;
        let failed = map.get_or_load(&1, async { Err::<Option<String>, _>("database down") }).await;
        assert_eq!(failed.unwrap().as_deref(), Some("old"));
        assert_eq!(map.fresh(&1).as_deref(), Some("old"), "the copy stays until its ttl");

        let failed = map
            .get_or_load(&1, async {
                map.forget(&1);
                Err::<Option<String>, _>("database down")
            })
            .await;
        assert_eq!(failed, Err("database down"), "a forgotten copy is not served");
        assert_eq!(map.fresh(&1), None);
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

    /// `due_for_refresh`, in a map refreshed behind the requests.
    async fn due_behind() -> TtlMap<u32, String> {
        holding_a_due_copy(TtlMap::refreshed_behind(Duration::from_millis(1_000), 2)).await
    }

    #[tokio::test]
    async fn a_map_refreshed_behind_serves_due_copies_and_leaves_the_load_to_the_refresher() {
        let map = due_behind().await;
        assert!(map.take_due().keys.is_empty(), "nothing was found due yet");
        for _ in 0..3 {
            let got = map.get_or_load(&1, async { Ok::<_, ()>(Some("inline".to_string())) }).await.unwrap();
            assert_eq!(got.as_deref(), Some("old"), "requests are served the copy, not a load of their own");
        }
        let due = map.take_due();
        assert_eq!(due.keys, vec![1], "the key is taken once, however many requests found it due");
        assert!(map.take_due().keys.is_empty());
        assert_eq!(map.keep_refreshed(&due, vec![(1, Some("new".to_string()))]), 1);
        assert_eq!(map.fresh(&1).as_deref(), Some("new"));
        assert!(map.copy(&1).is_some_and(|(_, due)| !due), "the refreshed copy starts a ttl of its own");
    }

    #[tokio::test]
    async fn a_refresh_drops_what_is_gone_and_leaves_what_it_could_not_load() {
        let map = due_behind().await;
        load(&map, 2, "two").await;
        map.get_or_load(&1, async { Ok::<_, ()>(None) }).await.unwrap();
        map.get_or_load(&2, async { Ok::<_, ()>(None) }).await.unwrap();
        let mut due = map.take_due();
        due.keys.sort();
        assert_eq!(due.keys, vec![1], "key 2's copy is not due yet");
        // Key 1 was not found: its copy goes. A key whose load failed is left out and keeps its copy.
        map.keep_refreshed(&due, vec![(1, None)]);
        assert_eq!(map.fresh(&1), None);
        assert_eq!(map.fresh(&2).as_deref(), Some("two"));
    }

    #[tokio::test]
    async fn a_refresh_across_a_forget_keeps_nothing() {
        let map = due_behind().await;
        load(&map, 2, "two").await;
        map.get_or_load(&1, async { Ok::<_, ()>(None) }).await.unwrap();
        let due = map.take_due();
        // A change to key 2 is forgotten while key 1 is being loaded: what the load read may
        // predate a change, so none of it is kept.
        map.forget(&2);
        assert_eq!(map.keep_refreshed(&due, vec![(1, Some("loaded".to_string()))]), 0);
        assert_eq!(map.fresh(&1).as_deref(), Some("old"));
    }

    #[tokio::test]
    async fn a_refresh_does_not_replace_a_copy_loaded_after_it_started() {
        let map = due_behind().await;
        map.get_or_load(&1, async { Ok::<_, ()>(None) }).await.unwrap();
        let due = map.take_due();
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The copy expired meanwhile, and a request loaded a newer one.
        assert_eq!(load(&map, 1, "newer").await.as_deref(), Some("newer"));
        map.keep_refreshed(&due, vec![(1, Some("refreshed".to_string()))]);
        assert_eq!(map.fresh(&1).as_deref(), Some("newer"));
    }

    #[tokio::test]
    async fn a_map_refreshed_by_requests_has_nothing_due() {
        let map = due_for_refresh().await;
        map.get_or_load(&1, async { Ok::<_, ()>(Some("new".to_string())) }).await.unwrap();
        assert!(map.take_due().keys.is_empty());
        assert_eq!(map.fresh(&1).as_deref(), Some("new"));
    }
}
