use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use super::*;
use crate::actors::kv_store::KvStore;
use crate::WorkerError;

fn cfg(secret: Option<&str>) -> DataPlaneConfig {
    DataPlaneConfig {
        read_timeout: Duration::from_millis(500),
        ..DataPlaneConfig::new(secret.map(|s| s.as_bytes().to_vec()), 1 << 30)
    }
}

async fn server(secret: Option<&str>) -> (KvStore, String, watch::Sender<bool>) {
    let store = KvStore::spawn(1 << 24, Duration::from_secs(60));
    let (stop_tx, stop) = watch::channel(false);
    let addr = serve("127.0.0.1:0".parse().unwrap(), store.clone(), &cfg(secret), stop).await.unwrap();
    (store, addr.to_string(), stop_tx)
}

fn payload(n: u32) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn fetch_take_and_free_over_one_connection() {
    let (store, endpoint, _stop) = server(None).await;
    let client = KvClient::new(cfg(None));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    store.put(a, payload(100_000)).await.unwrap();
    store.put(b, payload(10)).await.unwrap();
    assert_eq!(client.fetch(&endpoint, a, 100_000).await.unwrap(), payload(100_000));
    assert_eq!(client.lease(&endpoint, a, 100_000).take().await.unwrap(), payload(100_000));
    assert!(matches!(client.fetch(&endpoint, a, 100_000).await, Err(WorkerError::KvNotFound(_))), "take freed it");
    client.free(&endpoint, b).await;
    assert_eq!(store.stats().await.entries, 0);
    assert_eq!(client.idle_connections(&endpoint), 1, "every request reused one connection");
    let refused = KvClient::new(cfg(None)).fetch("127.0.0.1:1", a, 10).await;
    assert!(matches!(refused, Err(WorkerError::DataPlane { .. })), "{refused:?}");
}

#[tokio::test]
async fn a_dropped_lease_frees_the_kv() {
    let (store, endpoint, _stop) = server(None).await;
    let id = Uuid::new_v4();
    store.put(id, payload(64)).await.unwrap();
    drop(KvClient::new(cfg(None)).lease(&endpoint, id, 64));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.stats().await.entries > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the lease's free never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn with_a_secret_only_peers_that_hold_it_get_anything() {
    let (store, endpoint, _stop) = server(Some("s3cret")).await;
    let id = Uuid::new_v4();
    store.put(id, payload(32)).await.unwrap();
    let e = KvClient::new(cfg(None)).fetch(&endpoint, id, 32).await.unwrap_err();
    assert!(e.to_string().contains("requires PDQ_KV_SECRET"), "{e}");
    let e = KvClient::new(cfg(Some("wrong"))).fetch(&endpoint, id, 32).await.unwrap_err();
    assert!(e.to_string().contains("refused PDQ_KV_SECRET"), "{e}");
    // A raw client that skips the handshake and asks anyway gets the connection closed.
    let mut raw = tokio::net::TcpStream::connect(&endpoint).await.unwrap();
    let mut hello = [0u8; 41];
    raw.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello[8] & FLAG_AUTH, FLAG_AUTH);
    let mut req = vec![FETCH];
    req.extend_from_slice(id.as_bytes());
    req.extend_from_slice(&[0u8; 64 - 17]);
    raw.write_all(&req).await.unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "an unauthenticated peer got {} bytes", rest.len());
    assert_eq!(store.stats().await.entries, 1, "nothing was freed or taken");
    assert_eq!(KvClient::new(cfg(Some("s3cret"))).fetch(&endpoint, id, 32).await.unwrap(), payload(32));
    // A client with a secret does not trust a server without one.
    let (_s, open_endpoint, _stop2) = server(None).await;
    let e = KvClient::new(cfg(Some("s3cret"))).fetch(&open_endpoint, id, 32).await.unwrap_err();
    assert!(e.to_string().contains("does not authenticate"), "{e}");
}

/// A fake peer that sends a valid hello, then whatever `answer` says.
async fn liar(answer: Vec<u8>, then_hang: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut hello = MAGIC.to_vec();
                hello.push(0);
                hello.extend_from_slice(&[7u8; NONCE_LEN]);
                sock.write_all(&hello).await.ok();
                let mut req = [0u8; 17];
                sock.read_exact(&mut req).await.ok();
                sock.write_all(&answer).await.ok();
                if then_hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    endpoint
}

#[tokio::test]
async fn a_peer_announcing_more_than_the_handle_is_cut_off() {
    let mut answer = vec![FOUND];
    answer.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let endpoint = liar(answer, true).await;
    let e = KvClient::new(cfg(None)).lease(&endpoint, Uuid::new_v4(), 4096).take().await.unwrap_err();
    assert!(e.to_string().contains("announced 1099511627776 bytes"), "{e}");
    assert_eq!(e.class(), pdq_protocol::ErrorClass::KvLost);
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let endpoint = liar(Vec::new(), true).await;
    let started = std::time::Instant::now();
    let e = KvClient::new(cfg(None)).lease(&endpoint, Uuid::new_v4(), 4096).take().await.unwrap_err();
    assert!(matches!(e, WorkerError::DataPlaneTimeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // One that sends part of what it announced and stalls, too.
    let mut answer = vec![FOUND];
    answer.extend_from_slice(&1000u64.to_le_bytes());
    answer.extend_from_slice(&[1u8; 10]);
    let endpoint = liar(answer, true).await;
    let e = KvClient::new(cfg(None)).lease(&endpoint, Uuid::new_v4(), 4096).take().await.unwrap_err();
    assert!(matches!(e, WorkerError::DataPlaneTimeout { .. }), "{e}");
}

/// A link to `target` that can be cut: while cut, connections are accepted and then hear
/// nothing (as across a partition whose SYN got through, or a peer that hung); once healed,
/// new connections are forwarded.
async fn gate(target: String) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let open = Arc::new(AtomicBool::new(false));
    let is_open = open.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (target, is_open) = (target.clone(), is_open.clone());
            tokio::spawn(async move {
                if !is_open.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let mut up = tokio::net::TcpStream::connect(&target).await.unwrap();
                tokio::io::copy_bidirectional(&mut sock, &mut up).await.ok();
            });
        }
    });
    (endpoint, open)
}

async fn wait_entries(store: &KvStore, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().await.entries != n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_timed_out_take_still_frees_the_kv_once_the_peer_is_back() {
    let (store, target, _stop) = server(None).await;
    let (endpoint, open) = gate(target).await;
    let client = KvClient::new(cfg(None));
    let id = Uuid::new_v4();
    store.put(id, payload(64)).await.unwrap();
    let mut kv = client.lease(&endpoint, id, 64);
    let e = kv.take().await.unwrap_err();
    assert!(matches!(e, WorkerError::DataPlaneTimeout { .. }) && is_unreachable(&e), "{e}");
    // In backoff: the next take fails at once, without dialing.
    assert!(client.backoff_left(&endpoint).is_some());
    let started = std::time::Instant::now();
    let e = kv.take().await.unwrap_err();
    assert!(matches!(e, WorkerError::DataPlaneUnreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(100), "took {:?}", started.elapsed());
    // The take failed, so dropping the lease frees the KV: retried until the link is back.
    drop(kv);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.stats().await.entries, 1, "nothing reached the peer while the link was cut");
    open.store(true, Ordering::SeqCst);
    wait_entries(&store, 0, "the free never arrived after the link came back").await;
}

#[tokio::test]
async fn a_kept_lease_leaves_the_kv_and_an_answer_ends_the_backoff() {
    let (store, target, _stop) = server(None).await;
    let (endpoint, open) = gate(target).await;
    let client = KvClient::new(cfg(None));
    let id = Uuid::new_v4();
    store.put(id, payload(64)).await.unwrap();
    let mut kv = client.lease(&endpoint, id, 64);
    assert!(kv.take().await.is_err());
    let first = client.backoff_left(&endpoint).unwrap();
    kv.keep();
    tokio::time::sleep(first).await;
    // The backoff ran out: this take is the probe; it fails again, and the backoff doubles.
    let mut kv = client.lease(&endpoint, id, 64);
    assert!(matches!(kv.take().await, Err(WorkerError::DataPlaneTimeout { .. })));
    let second = client.backoff_left(&endpoint).unwrap();
    assert!(second > first, "{second:?} after {first:?}");
    kv.keep();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.stats().await.entries, 1, "a kept lease frees nothing");
    open.store(true, Ordering::SeqCst);
    tokio::time::sleep(second).await;
    let mut kv = client.lease(&endpoint, id, 64);
    assert_eq!(kv.take().await.unwrap(), payload(64));
    assert!(client.backoff_left(&endpoint).is_none(), "an answer ends the backoff");
    wait_entries(&store, 0, "the take freed it").await;
}
