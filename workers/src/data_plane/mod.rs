//! The KV data plane: a small TCP protocol between a decode worker and the prefill worker a KV
//! handle names. KV bytes never go through the broker.
//!
//! A connection opens with the server's hello: 8 magic bytes, a flags byte (bit 0: peers must
//! authenticate) and a 32-byte nonce. With `PDQ_KV_SECRET` set, both sides prove they hold it
//! (`auth.rs`) before anything else is said; a peer that cannot gets the connection closed.
//! Then any number of requests: one op byte and the 16-byte KV id. `FETCH` and `TAKE` (fetch
//! and free in one round trip) are answered with a status byte and, when found, a u64
//! little-endian length and the bytes; `FREE` with a status byte.
//!
//! Bounds: the client never allocates more than the handle's `kv_bytes` (capped by its own
//! maximum), cuts off a peer that announces more, and gives every dial and every answer a
//! deadline, so a dead, hung or lying peer costs a timeout, never memory or a stuck request.

mod auth;
mod client;
mod server;
mod shm;

use std::time::Duration;

pub use client::{is_unreachable, KvClient, RemoteKv};
pub use server::serve;
pub use shm::{host_id as shm_host_id, read as shm_read, usable as shm_usable, KvBytes};

const MAGIC: &[u8; 8] = b"PDQKV\x00\x02\x00";
const FLAG_AUTH: u8 = 1;
const NONCE_LEN: usize = 32;

const FETCH: u8 = 1;
const FREE: u8 = 2;
const TAKE: u8 = 3;
const FOUND: u8 = 0;
const NOT_FOUND: u8 = 1;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may take to start answering; a transfer also gets time for its size.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a decoder keeps handing back the handles of a prefill rank it cannot reach (for a
/// decoder that can, or for itself once the partition heals) before it prefills them again.
pub const DEFAULT_UNREACHABLE_WAIT: Duration = Duration::from_secs(30);
/// The slowest transfer rate a deadline allows for, on top of the read timeout.
const MIN_BYTES_PER_SEC: u64 = 16 << 20;
/// A server closes a connection idle this long; clients reuse one idle for less.
const SERVER_IDLE: Duration = Duration::from_secs(120);
const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// A peer must finish the hello and authentication in this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings both sides of a cluster's data plane share.
#[derive(Clone, Default)]
pub struct DataPlaneConfig {
    /// `PDQ_KV_SECRET`: when set, every peer must prove it holds the same secret.
    pub secret: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long after a handle was published a decoder that cannot reach its prefill rank
    /// still hands it back rather than prefilling the request again (`--kv-unreachable-wait`).
    pub unreachable_wait: Duration,
    /// The most bytes one KV may have, whatever a handle says.
    pub max_kv_bytes: u64,
    /// Where KVs live in shared memory for decoders on the same host (`--kv-shm-dir`); `None`
    /// sends every KV over TCP.
    pub shm_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DataPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("unreachable_wait", &self.unreachable_wait)
            .field("max_kv_bytes", &self.max_kv_bytes)
            .field("shm_dir", &self.shm_dir)
            .finish()
    }
}

impl DataPlaneConfig {
    pub fn new(secret: Option<Vec<u8>>, max_kv_bytes: u64) -> DataPlaneConfig {
        DataPlaneConfig {
            secret,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            unreachable_wait: DEFAULT_UNREACHABLE_WAIT,
            max_kv_bytes,
            shm_dir: None,
        }
    }
}

#[cfg(test)]
mod tests;
