//! The prefill side's KV store: serialized KV caches waiting for their decoder.
//!
//! One task owns the map (actor); callers hold a cloneable [`KvStore`] handle. Invariants:
//! - `used` is the sum of the byte lengths of the held entries, and never exceeds `budget`
//!   except for a single entry larger than the whole budget (admitted alone, else it would wait forever);
//! - a `put` that does not fit waits, in arrival order, until frees or expiry make room;
//! - an entry is removed exactly once: by `free`, or by expiry after `ttl` without a free;
//!   an entry past its TTL is never served, whether or not the periodic sweep has run.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::data_plane::KvBytes;
use crate::WorkerError;

enum Command {
    Put {
        id: Uuid,
        bytes: Arc<KvBytes>,
        done: oneshot::Sender<()>,
    },
    Get {
        id: Uuid,
        reply: oneshot::Sender<Option<Arc<KvBytes>>>,
    },
    /// Get and free in one step: a decoder's fetch that ends the lease.
    Take {
        id: Uuid,
        reply: oneshot::Sender<Option<Arc<KvBytes>>>,
    },
    Free {
        id: Uuid,
    },
    Stats {
        reply: oneshot::Sender<KvStats>,
    },
}

/// A KV this worker holds for a request. Dropping it frees the KV; once its handle is
/// published, [`KvLease::hand_off`] leaves it to the decoder (who takes it) or to the TTL.
pub struct KvLease {
    store: KvStore,
    id: Uuid,
    held: bool,
}

impl KvLease {
    pub fn hand_off(mut self) {
        self.held = false;
    }
}

impl Drop for KvLease {
    fn drop(&mut self) {
        if self.held {
            self.store.free(self.id);
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    pub entries: usize,
    pub used: usize,
    pub waiting: usize,
    pub expired: u64,
    /// Since a decoder last fetched, took or freed anything.
    pub idle: Duration,
}

#[derive(Clone)]
pub struct KvStore {
    tx: mpsc::UnboundedSender<Command>,
}

impl KvStore {
    pub fn spawn(budget: usize, ttl: Duration) -> KvStore {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, budget, ttl));
        KvStore { tx }
    }

    /// Stores a KV; returns once it is held (waiting for room if the budget is spent).
    pub async fn put(&self, id: Uuid, bytes: impl Into<KvBytes>) -> Result<(), WorkerError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Put { id, bytes: Arc::new(bytes.into()), done })
            .map_err(|_| WorkerError::KvStoreStopped)?;
        wait.await.map_err(|_| WorkerError::KvStoreStopped)
    }

    /// Stores a KV under a lease that frees it when dropped, unless handed off.
    pub async fn lease(&self, id: Uuid, bytes: impl Into<KvBytes>) -> Result<KvLease, WorkerError> {
        self.put(id, bytes).await?;
        Ok(KvLease { store: self.clone(), id, held: true })
    }

    pub async fn take(&self, id: Uuid) -> Option<Arc<KvBytes>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Take { id, reply }).ok()?;
        rx.await.ok().flatten()
    }

    pub async fn get(&self, id: Uuid) -> Option<Arc<KvBytes>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Get { id, reply }).ok()?;
        rx.await.ok().flatten()
    }

    pub fn free(&self, id: Uuid) {
        let _ = self.tx.send(Command::Free { id });
    }

    pub async fn stats(&self) -> KvStats {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stats { reply }).is_err() {
            return KvStats::default();
        }
        rx.await.unwrap_or_default()
    }
}

struct Entry {
    bytes: Arc<KvBytes>,
    stored_at: Instant,
}

struct State {
    budget: usize,
    ttl: Duration,
    used: usize,
    entries: HashMap<Uuid, Entry>,
    waiting: VecDeque<(Uuid, Arc<KvBytes>, oneshot::Sender<()>)>,
    expired: u64,
    last_served: Instant,
}

impl State {
    fn admit_waiting(&mut self) {
        while let Some((_, bytes, _)) = self.waiting.front() {
            let fits = self.used + bytes.len() <= self.budget || self.entries.is_empty();
            if !fits {
                break;
            }
            let (id, bytes, done) = self.waiting.pop_front().expect("front exists");
            self.used += bytes.len();
            self.entries.insert(id, Entry { bytes, stored_at: Instant::now() });
            let _ = done.send(());
        }
    }

    fn remove(&mut self, id: &Uuid) {
        if let Some(e) = self.entries.remove(id) {
            self.used -= e.bytes.len();
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let stale: Vec<Uuid> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.stored_at) > self.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            tracing::warn!(kv_id = %id, "KV expired before its decoder fetched it");
            self.remove(&id);
            self.expired += 1;
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, budget: usize, ttl: Duration) {
    let mut s = State {
        budget,
        ttl,
        used: 0,
        entries: HashMap::new(),
        waiting: VecDeque::new(),
        expired: 0,
        last_served: Instant::now(),
    };
    let mut sweep = tokio::time::interval(ttl.min(Duration::from_secs(5)).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Put { id, bytes, done }) => {
                    s.waiting.push_back((id, bytes, done));
                    s.admit_waiting();
                }
                Some(Command::Get { id, reply }) => {
                    s.last_served = Instant::now();
                    // An entry past its TTL is gone even if the sweep has not run yet.
                    s.expire();
                    let _ = reply.send(s.entries.get(&id).map(|e| e.bytes.clone()));
                }
                Some(Command::Take { id, reply }) => {
                    s.last_served = Instant::now();
                    s.expire();
                    let taken = s.entries.get(&id).map(|e| e.bytes.clone());
                    s.remove(&id);
                    s.admit_waiting();
                    let _ = reply.send(taken);
                }
                Some(Command::Free { id }) => {
                    s.last_served = Instant::now();
                    s.remove(&id);
                    s.admit_waiting();
                }
                Some(Command::Stats { reply }) => {
                    let _ = reply.send(KvStats {
                        entries: s.entries.len(),
                        used: s.used,
                        waiting: s.waiting.len(),
                        expired: s.expired,
                        idle: s.last_served.elapsed(),
                    });
                }
            },
            _ = sweep.tick() => {
                s.expire();
                s.admit_waiting();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_waits_for_room_and_free_releases_it() {
        let kv = KvStore::spawn(10, Duration::from_secs(60));
        let a = Uuid::now_v7();
        kv.put(a, vec![0; 8]).await.unwrap();
        let b = Uuid::now_v7();
        let kv2 = kv.clone();
        let waiter = tokio::spawn(async move { kv2.put(b, vec![1; 8]).await });
        while kv.stats().await.waiting == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "second put must wait for room");
        let stats = kv.stats().await;
        assert_eq!((stats.entries, stats.used, stats.waiting, stats.expired), (1, 8, 1, 0));
        kv.free(a);
        waiter.await.unwrap().unwrap();
        assert_eq!(&kv.get(b).await.unwrap()[..], &[1; 8]);
        assert!(kv.get(a).await.is_none());
    }

    #[tokio::test]
    async fn take_frees_and_a_dropped_lease_frees() {
        let kv = KvStore::spawn(100, Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        kv.put(a, vec![3; 4]).await.unwrap();
        assert_eq!(&kv.take(a).await.unwrap()[..], &[3; 4]);
        assert!(kv.take(a).await.is_none());
        drop(kv.lease(b, vec![0; 4]).await.unwrap());
        assert_eq!(kv.stats().await.entries, 0);
        kv.lease(b, vec![0; 4]).await.unwrap().hand_off();
        assert_eq!(kv.stats().await.entries, 1, "a handed-off lease stays until taken or expired");
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_budget_is_admitted_alone() {
        let kv = KvStore::spawn(4, Duration::from_secs(60));
        kv.put(Uuid::now_v7(), vec![0; 16]).await.unwrap();
        assert_eq!(kv.stats().await.used, 16);
    }

    #[tokio::test]
    async fn unfetched_entries_expire() {
        let kv = KvStore::spawn(100, Duration::from_millis(20));
        let a = Uuid::now_v7();
        kv.put(a, vec![0; 4]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(kv.get(a).await.is_none());
        assert_eq!(kv.stats().await.expired, 1);
    }
}
