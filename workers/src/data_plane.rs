//! The KV data plane: a small TCP protocol between a decode worker and the prefill worker named
//! in a KV handle. KV bytes never go through the broker.
//!
//! Request: one op byte (`FETCH` or `FREE`) and the 16-byte KV id. A `FETCH` is answered with a
//! status byte and, when found, a u64 little-endian length and the bytes; a `FREE` with a status
//! byte. A connection may carry any number of requests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use crate::kv_store::KvStore;
use crate::WorkerError;

const FETCH: u8 = 1;
const FREE: u8 = 2;
const FOUND: u8 = 0;
const NOT_FOUND: u8 = 1;

/// Serves the KV store on `bind` until `stop` fires; returns the bound address.
pub async fn serve(
    bind: SocketAddr,
    store: KvStore,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((sock, _)) => {
                        sock.set_nodelay(true).ok();
                        tokio::spawn(serve_conn(sock, store.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "data plane accept failed"),
                },
            }
        }
    });
    Ok(addr)
}

async fn serve_conn(sock: TcpStream, store: KvStore) -> Result<(), std::io::Error> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let op = match rd.read_u8().await {
            Ok(op) => op,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut id = [0u8; 16];
        rd.read_exact(&mut id).await?;
        let id = Uuid::from_bytes(id);
        match op {
            FETCH => match store.get(id).await {
                Some(bytes) => {
                    wr.write_u8(FOUND).await?;
                    wr.write_u64_le(bytes.len() as u64).await?;
                    wr.write_all(&bytes).await?;
                }
                None => wr.write_u8(NOT_FOUND).await?,
            },
            FREE => {
                store.free(id);
                wr.write_u8(FOUND).await?;
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown data plane op {other}"),
                ))
            }
        }
        wr.flush().await?;
    }
}

/// Fetches a KV from the prefill worker at `endpoint`.
pub async fn fetch(endpoint: &str, id: Uuid) -> Result<Vec<u8>, WorkerError> {
    let io = |source| WorkerError::DataPlane { endpoint: endpoint.to_string(), source };
    let mut sock = TcpStream::connect(endpoint).await.map_err(io)?;
    sock.set_nodelay(true).ok();
    let mut req = [0u8; 17];
    req[0] = FETCH;
    req[1..].copy_from_slice(id.as_bytes());
    sock.write_all(&req).await.map_err(io)?;
    match sock.read_u8().await.map_err(io)? {
        FOUND => {
            let len = sock.read_u64_le().await.map_err(io)? as usize;
            let mut bytes = vec![0u8; len];
            sock.read_exact(&mut bytes).await.map_err(io)?;
            Ok(bytes)
        }
        _ => Err(WorkerError::KvNotFound(id)),
    }
}

/// Tells the prefill worker the KV is no longer needed. Best effort: expiry catches a lost free.
pub async fn free(endpoint: &str, id: Uuid) {
    let attempt = async {
        let mut sock = TcpStream::connect(endpoint).await?;
        let mut req = [0u8; 17];
        req[0] = FREE;
        req[1..].copy_from_slice(id.as_bytes());
        sock.write_all(&req).await?;
        sock.read_u8().await
    };
    if let Err(e) = attempt.await {
        tracing::debug!(%endpoint, kv_id = %id, error = %e, "KV free did not reach the prefill worker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fetch_then_free_over_tcp() {
        let store = KvStore::spawn(1 << 20, Duration::from_secs(60));
        let (_stop_tx, stop) = watch::channel(false);
        let addr = serve("127.0.0.1:0".parse().unwrap(), store.clone(), stop).await.unwrap();
        let id = Uuid::now_v7();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store.put(id, payload.clone()).await.unwrap();
        let endpoint = addr.to_string();
        assert_eq!(fetch(&endpoint, id).await.unwrap(), payload);
        free(&endpoint, id).await;
        assert!(matches!(fetch(&endpoint, id).await, Err(WorkerError::KvNotFound(_))));
        assert!(matches!(fetch("127.0.0.1:1", id).await, Err(WorkerError::DataPlane { .. })));
    }
}
