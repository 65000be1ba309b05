//! The decode side: persistent, authenticated connections per prefill endpoint, and a lease on
//! each remote KV that frees it unless it was taken or kept.
//!
//! Invariants:
//! - a lease is settled only by an answer from the peer (the KV taken, or not there, or a
//!   protocol violation) or by [`RemoteKv::keep`]; any other end (a failed or timed-out take,
//!   a drop) frees the KV in the background, retried on fresh connections for
//!   [`FREE_RETRY_FOR`], so a KV outlives its decoder's interest by at most that, not by the
//!   prefill rank's TTL;
//! - an endpoint that timed out or was unreachable is in backoff (doubling per failure, up to
//!   [`MAX_BACKOFF`]): takes fail fast with [`WorkerError::DataPlaneUnreachable`] without dialing,
//!   except one probe each time the backoff runs out; any answer ends the backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use uuid::Uuid;

use super::auth::{self, MAC_LEN};
#[cfg(test)]
use super::FETCH;
use super::{DataPlaneConfig, CLIENT_IDLE, FLAG_AUTH, FOUND, FREE, MAGIC, MIN_BYTES_PER_SEC, NONCE_LEN, TAKE};
use crate::WorkerError;

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 16;
/// Bytes read per step while receiving a KV: memory grows with what arrived, not with what
/// the peer announced.
const READ_CHUNK: usize = 1 << 20;
/// The first backoff after an endpoint fails; it doubles with each failure after that.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long a lost free is tried again (a partition healing); after that the TTL frees the KV.
const FREE_RETRY_FOR: Duration = Duration::from_secs(120);

/// An endpoint that failed lately.
struct Backoff {
    failures: u32,
    retry_at: Instant,
    /// The failure that put it there, for the errors of the takes it turns away.
    last: String,
}

struct Idle {
    sock: TcpStream,
    since: Instant,
}

/// Cloneable; every clone shares the pool.
#[derive(Clone)]
pub struct KvClient {
    cfg: Arc<DataPlaneConfig>,
    /// Held only to push or pop a connection, never across `.await`.
    idle: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
    /// Endpoints in backoff; held, like `idle`, never across `.await`.
    backoff: Arc<Mutex<HashMap<String, Backoff>>>,
}

impl KvClient {
    pub fn new(cfg: DataPlaneConfig) -> KvClient {
        KvClient { cfg: Arc::new(cfg), idle: Arc::default(), backoff: Arc::default() }
    }

    /// A lease on the KV `id` at `endpoint`: freed when dropped, unless taken.
    pub fn lease(&self, endpoint: &str, id: Uuid, kv_bytes: u64) -> RemoteKv {
        RemoteKv { client: self.clone(), endpoint: endpoint.to_string(), id, kv_bytes, settled: false }
    }

    /// Reads the KV without freeing it.
    #[cfg(test)]
    pub async fn fetch(&self, endpoint: &str, id: Uuid, max_bytes: u64) -> Result<Vec<u8>, WorkerError> {
        self.request(endpoint, FETCH, id, max_bytes).await.and_then(|b| b.ok_or(WorkerError::KvNotFound(id)))
    }

    #[cfg(test)]
    pub fn idle_connections(&self, endpoint: &str) -> usize {
        self.idle.lock().expect("pool lock").get(endpoint).map_or(0, Vec::len)
    }

    /// Frees the KV, trying again on a fresh connection while the peer is out of reach, for
    /// up to [`FREE_RETRY_FOR`]; a peer that refuses connections is gone, and its KV with it.
    pub async fn free(&self, endpoint: &str, id: Uuid) {
        let started = Instant::now();
        let mut pause = FIRST_BACKOFF;
        loop {
            match self.request(endpoint, FREE, id, 0).await {
                Ok(_) => return,
                Err(e) if is_unreachable(&e) && started.elapsed() + pause < FREE_RETRY_FOR => {
                    tracing::debug!(%endpoint, kv_id = %id, error = %e, "KV free did not reach the prefill worker; retrying");
                }
                Err(e) => {
                    tracing::debug!(%endpoint, kv_id = %id, error = %e, "KV free given up; the TTL frees it");
                    return;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// How long `endpoint` stays in backoff, or `None` when it is not in backoff.
    pub fn backoff_left(&self, endpoint: &str) -> Option<Duration> {
        let backoff = self.backoff.lock().expect("backoff lock");
        let left = backoff.get(endpoint)?.retry_at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Whether `endpoint` may be dialed now; `Err` with the backoff left when not. When an
    /// endpoint's backoff has run out, the first caller is its probe and the others wait for
    /// the probe's answer (or its deadline).
    fn may_dial(&self, endpoint: &str) -> Result<(), WorkerError> {
        let mut backoff = self.backoff.lock().expect("backoff lock");
        let Some(b) = backoff.get_mut(endpoint) else { return Ok(()) };
        let now = Instant::now();
        if b.retry_at > now {
            return Err(WorkerError::DataPlaneUnreachable { last: b.last.clone(), retry_in: b.retry_at - now });
        }
        b.retry_at = now + self.cfg.connect_timeout + self.cfg.read_timeout;
        Ok(())
    }

    fn unreachable(&self, endpoint: &str, e: &WorkerError) {
        let mut backoff = self.backoff.lock().expect("backoff lock");
        let b = backoff.entry(endpoint.to_string()).or_insert(Backoff {
            failures: 0,
            retry_at: Instant::now(),
            last: String::new(),
        });
        b.failures += 1;
        b.last = e.to_string();
        let pause = FIRST_BACKOFF.saturating_mul(1 << (b.failures - 1).min(16)).min(MAX_BACKOFF);
        b.retry_at = Instant::now() + pause;
        tracing::info!(%endpoint, failures = b.failures, backoff = ?pause, "prefill data plane unreachable; backing off");
    }

    fn reachable(&self, endpoint: &str) {
        if self.backoff.lock().expect("backoff lock").remove(endpoint).is_some() {
            tracing::info!(%endpoint, "prefill data plane reachable again");
        }
    }

    /// One request; a pooled connection that turns out dead is replaced once by a fresh dial.
    async fn request(&self, endpoint: &str, op: u8, id: Uuid, max_bytes: u64) -> Result<Option<Vec<u8>>, WorkerError> {
        if let Some(sock) = self.checkout(endpoint) {
            match self.exchange(sock, endpoint, op, id, max_bytes).await {
                Ok((answer, sock)) => {
                    self.checkin(endpoint, sock);
                    return Ok(answer);
                }
                // A peer that closed an idle connection: dial it afresh. A peer that hung or
                // lied is not asked twice.
                Err(e @ WorkerError::DataPlane { .. }) => {
                    tracing::debug!(%endpoint, error = %e, "pooled data plane connection failed; dialing")
                }
                Err(e) => return Err(e),
            }
        }
        let sock = self.dial(endpoint).await?;
        let (answer, sock) = self.exchange(sock, endpoint, op, id, max_bytes).await?;
        self.checkin(endpoint, sock);
        Ok(answer)
    }

    fn checkout(&self, endpoint: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = idle.get_mut(endpoint)?;
        while let Some(c) = conns.pop() {
            if c.since.elapsed() < CLIENT_IDLE {
                return Some(c.sock);
            }
        }
        None
    }

    fn checkin(&self, endpoint: &str, sock: TcpStream) {
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = idle.entry(endpoint.to_string()).or_default();
        if conns.len() < MAX_IDLE_PER_ENDPOINT {
            conns.push(Idle { sock, since: Instant::now() });
        }
    }

    async fn dial(&self, endpoint: &str) -> Result<TcpStream, WorkerError> {
        let io = |source| WorkerError::DataPlane { endpoint: endpoint.to_string(), source };
        let mut sock = timeout(self.cfg.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| self.timed_out(endpoint, self.cfg.connect_timeout))?
            .map_err(io)?;
        sock.set_nodelay(true).ok();
        timeout(self.cfg.read_timeout, self.handshake(&mut sock, endpoint))
            .await
            .map_err(|_| self.timed_out(endpoint, self.cfg.read_timeout))??;
        Ok(sock)
    }

    async fn handshake(&self, sock: &mut TcpStream, endpoint: &str) -> Result<(), WorkerError> {
        let io = |source| WorkerError::DataPlane { endpoint: endpoint.to_string(), source };
        let bad =
            |reason: &str| WorkerError::DataPlaneProtocol { endpoint: endpoint.to_string(), reason: reason.into() };
        let mut hello = [0u8; 8 + 1 + NONCE_LEN];
        sock.read_exact(&mut hello).await.map_err(io)?;
        if &hello[..8] != MAGIC {
            return Err(bad("not a pdq KV data plane (or another version)"));
        }
        let requires_auth = hello[8] & FLAG_AUTH != 0;
        let server_nonce = &hello[9..];
        match (&self.cfg.secret, requires_auth) {
            (None, false) => Ok(()),
            (None, true) => Err(bad("the peer requires PDQ_KV_SECRET, which this worker does not have")),
            (Some(_), false) => Err(bad("the peer does not authenticate, but PDQ_KV_SECRET is set here")),
            (Some(secret), true) => {
                let client_nonce = auth::nonce();
                let mut proof = Vec::with_capacity(NONCE_LEN + MAC_LEN);
                proof.extend_from_slice(&client_nonce);
                proof.extend_from_slice(&auth::client_proof(secret, server_nonce, &client_nonce));
                sock.write_all(&proof).await.map_err(io)?;
                let mut answer = [0u8; MAC_LEN];
                sock.read_exact(&mut answer).await.map_err(|_| bad("the peer refused PDQ_KV_SECRET"))?;
                if !auth::verify_server(secret, server_nonce, &client_nonce, &answer) {
                    return Err(bad("the peer does not hold PDQ_KV_SECRET"));
                }
                Ok(())
            }
        }
    }

    /// Sends one request and reads its answer under a deadline that grows with the bytes.
    async fn exchange(
        &self,
        mut sock: TcpStream,
        endpoint: &str,
        op: u8,
        id: Uuid,
        max_bytes: u64,
    ) -> Result<(Option<Vec<u8>>, TcpStream), WorkerError> {
        let limit = max_bytes.min(self.cfg.max_kv_bytes);
        let deadline = self.cfg.read_timeout + Duration::from_secs_f64(limit as f64 / MIN_BYTES_PER_SEC as f64);
        let io = |source| WorkerError::DataPlane { endpoint: endpoint.to_string(), source };
        let work = async {
            let mut req = [0u8; 17];
            req[0] = op;
            req[1..].copy_from_slice(id.as_bytes());
            sock.write_all(&req).await.map_err(io)?;
            let status = sock.read_u8().await.map_err(io)?;
            if op == FREE || status != FOUND {
                return Ok(None);
            }
            let len = sock.read_u64_le().await.map_err(io)?;
            if len > limit {
                return Err(WorkerError::DataPlaneProtocol {
                    endpoint: endpoint.to_string(),
                    reason: format!("the peer announced {len} bytes for KV {id}, more than the {limit} it may have"),
                });
            }
            let mut bytes = Vec::with_capacity((len as usize).min(READ_CHUNK));
            let mut left = len as usize;
            while left > 0 {
                let step = left.min(READ_CHUNK);
                let start = bytes.len();
                bytes.resize(start + step, 0);
                sock.read_exact(&mut bytes[start..]).await.map_err(io)?;
                left -= step;
            }
            Ok(Some(bytes))
        };
        let Ok(answer) = timeout(deadline, work).await else {
            // Reset, not closed: a request still unsent (a partition) is dropped here, rather
            // than delivered when the link heals, taking a KV that nobody is reading anymore.
            sock.set_zero_linger().ok();
            return Err(self.timed_out(endpoint, deadline));
        };
        Ok((answer?, sock))
    }

    fn timed_out(&self, endpoint: &str, after: Duration) -> WorkerError {
        WorkerError::DataPlaneTimeout { endpoint: endpoint.to_string(), seconds: after.as_secs_f64() }
    }
}

/// Whether `e` says the peer is out of reach (silent, timed out, no route), as opposed to gone
/// (refusing connections, resetting them) or lying: the KV may still be there for later.
pub fn is_unreachable(e: &WorkerError) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
    match e {
        WorkerError::DataPlaneTimeout { .. } | WorkerError::DataPlaneUnreachable { .. } => true,
        WorkerError::DataPlane { source, .. } => {
            matches!(source.kind(), TimedOut | HostUnreachable | NetworkUnreachable)
        }
        _ => false,
    }
}

/// A decoder's claim on one KV held by a prefill worker. Taking it frees it there in the same
/// round trip; dropping it untaken (a failed take included) frees it in the background, so no
/// path leaks a KV until its TTL; [`RemoteKv::keep`] leaves it for the next decoder.
pub struct RemoteKv {
    client: KvClient,
    endpoint: String,
    id: Uuid,
    kv_bytes: u64,
    settled: bool,
}

impl RemoteKv {
    /// Fetches and frees the KV, reading at most the handle's `kv_bytes`. An endpoint in
    /// backoff fails at once with [`WorkerError::DataPlaneUnreachable`].
    pub async fn take(&mut self) -> Result<Vec<u8>, WorkerError> {
        self.client.may_dial(&self.endpoint)?;
        match self.client.request(&self.endpoint, TAKE, self.id, self.kv_bytes).await {
            Ok(answer) => {
                // Taken, or not there: either way nothing is left to free.
                self.settled = true;
                self.client.reachable(&self.endpoint);
                answer.ok_or(WorkerError::KvNotFound(self.id))
            }
            Err(e) => {
                // A peer that broke the protocol is asked nothing more, not even to free.
                if matches!(e, WorkerError::DataPlaneProtocol { .. }) {
                    self.settled = true;
                }
                // A refusal or a reset is an answer too: the host is there (its worker may not be).
                if is_unreachable(&e) {
                    self.client.unreachable(&self.endpoint, &e);
                } else {
                    self.client.reachable(&self.endpoint);
                }
                Err(e)
            }
        }
    }

    /// Leaves the KV on the prefill rank, for whoever takes the handle next.
    pub fn keep(mut self) {
        self.settled = true;
    }
}

impl Drop for RemoteKv {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (client, endpoint, id) = (self.client.clone(), std::mem::take(&mut self.endpoint), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { client.free(&endpoint, id).await });
        }
    }
}
