//! The prefill side: serves its KV store to decoders that pass the hello.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use uuid::Uuid;

use super::auth::{self, MAC_LEN};
use super::{
    DataPlaneConfig, FETCH, FLAG_AUTH, FOUND, FREE, HANDSHAKE_TIMEOUT, MAGIC, NONCE_LEN, NOT_FOUND, SERVER_IDLE, TAKE,
};
use crate::actors::kv_store::KvStore;

/// Serves the KV store on `bind` until `stop` fires; returns the bound address.
pub async fn serve(
    bind: SocketAddr,
    store: KvStore,
    cfg: &DataPlaneConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let secret: Option<Arc<[u8]>> = cfg.secret.as_deref().map(Arc::from);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        sock.set_nodelay(true).ok();
                        let (store, secret) = (store.clone(), secret.clone());
                        tokio::spawn(async move {
                            if let Err(e) = serve_conn(sock, store, secret).await {
                                tracing::debug!(%peer, error = %e, "data plane connection ended");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "data plane accept failed"),
                },
            }
        }
    });
    Ok(addr)
}

fn invalid(reason: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason.into())
}

async fn serve_conn(sock: TcpStream, store: KvStore, secret: Option<Arc<[u8]>>) -> Result<(), std::io::Error> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let server_nonce = auth::nonce();
    let mut hello = Vec::with_capacity(MAGIC.len() + 1 + NONCE_LEN);
    hello.extend_from_slice(MAGIC);
    hello.push(if secret.is_some() { FLAG_AUTH } else { 0 });
    hello.extend_from_slice(&server_nonce);
    wr.write_all(&hello).await?;
    if let Some(secret) = &secret {
        let mut proof = [0u8; NONCE_LEN + MAC_LEN];
        timeout(HANDSHAKE_TIMEOUT, rd.read_exact(&mut proof))
            .await
            .map_err(|_| invalid("no authentication in time"))??;
        let (client_nonce, mac) = proof.split_at(NONCE_LEN);
        if !auth::verify_client(secret, &server_nonce, client_nonce, mac) {
            // Nothing is served, and nothing is said about why.
            return Err(invalid("peer failed authentication"));
        }
        wr.write_all(&auth::server_proof(secret, &server_nonce, client_nonce)).await?;
    }
    wr.flush().await?;
    loop {
        let op = match timeout(SERVER_IDLE, rd.read_u8()).await {
            Err(_) => return Ok(()),
            Ok(Ok(op)) => op,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let mut id = [0u8; 16];
        timeout(HANDSHAKE_TIMEOUT, rd.read_exact(&mut id)).await.map_err(|_| invalid("truncated request"))??;
        let id = Uuid::from_bytes(id);
        match op {
            FETCH | TAKE => {
                let found = if op == TAKE { store.take(id).await } else { store.get(id).await };
                match found {
                    Some(bytes) => {
                        wr.write_u8(FOUND).await?;
                        wr.write_u64_le(bytes.len() as u64).await?;
                        wr.write_all(&bytes).await?;
                    }
                    None => wr.write_u8(NOT_FOUND).await?,
                }
            }
            FREE => {
                store.free(id);
                wr.write_u8(FOUND).await?;
            }
            other => return Err(invalid(format!("unknown data plane op {other}"))),
        }
        wr.flush().await?;
    }
}
