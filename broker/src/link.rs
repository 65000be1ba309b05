//! The broker link: one task owns the AMQP connection and replaces it when it dies, moving on to
//! the next node when the broker is a cluster of several.
//!
//! Invariants:
//! - at most one connection attempt runs at a time: a caller that met a failure on generation
//!   `g` asks again with `stale = Some(g)`, and every such caller gets the same new connection;
//! - a new connection has declared the namespace's topology (when a shape was declared) before
//!   any caller sees it, so consumers and publishers resume against queues that exist;
//! - only the first connection can fail with `Unreachable`, and only when no node answers; later
//!   ones try the other nodes round-robin, from one that depends on the process's connection
//!   name, and the node that failed last (`nodes::rotation`),
//!   with backoff and jitter after each full round, until one succeeds, the link is closed, or
//!   the broker refuses for good (credentials, a conflicting topology), which is returned to the
//!   caller;
//! - a connection replaced while it still works (a caller found one of its channels broken) is
//!   closed, so reconnects never pile up connections on the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use pdq_protocol::ClusterShape;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::is_permanent;
use crate::nodes::{rotation, spread_of};
use crate::options::{BrokerOptions, OP_TIMEOUT};
use crate::topology::declare_on;
use crate::BrokerError;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A live connection, the generation it belongs to, and the node (an index into the options'
/// nodes) it is open to.
#[derive(Clone)]
pub(crate) struct Conn {
    pub generation: u64,
    pub connection: Arc<Connection>,
    pub node: usize,
}

struct Get {
    stale: Option<u64>,
    reply: oneshot::Sender<Result<Conn, BrokerError>>,
}

struct Shared {
    opts: BrokerOptions,
    reconnects: Arc<AtomicU64>,
    /// Set by `declare`; a reconnect declares the same topology again.
    shape: Mutex<Option<ClusterShape>>,
    closed: watch::Sender<bool>,
}

/// A cloneable handle on the connection task.
#[derive(Clone)]
pub(crate) struct Link {
    tx: mpsc::UnboundedSender<Get>,
    shared: Arc<Shared>,
}

impl Link {
    /// Connects once (failing fast, as a command line should when the broker is not there),
    /// then keeps the connection alive in the background.
    pub async fn connect(opts: BrokerOptions) -> Result<Link, BrokerError> {
        let (node, first) = open_first(&opts).await?;
        tracing::info!(connection = %opts.connection_name, node = %opts.nodes.redacted(node), "connected to the broker");
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared { opts, reconnects: Arc::default(), shape: Mutex::new(None), closed });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(shared.clone(), rx, Conn { generation: 1, connection: Arc::new(first), node }));
        Ok(Link { tx, shared })
    }

    /// The current connection; with `stale`, a newer one than that generation.
    pub async fn get(&self, stale: Option<u64>) -> Result<Conn, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Get { stale, reply }).map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)?
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.shared.opts
    }

    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    pub fn reconnect_counter(&self) -> Arc<AtomicU64> {
        self.shared.reconnects.clone()
    }

    pub fn set_shape(&self, shape: ClusterShape) {
        *self.shared.shape.lock().expect("shape lock") = Some(shape);
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Stops reconnecting and closes the connection.
    pub async fn close(&self) {
        self.shared.closed.send_replace(true);
        if let Ok(conn) = self.get(None).await {
            if tokio::time::timeout(OP_TIMEOUT, conn.connection.close(200, "bye".into())).await.is_err() {
                tracing::warn!(connection = %self.shared.opts.connection_name, "closing the connection timed out");
            }
        }
    }
}

async fn open(opts: &BrokerOptions, node: usize) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(opts.connection_name.clone().into());
    let url = opts.nodes.redacted(node);
    Connection::connect(&opts.url_with_heartbeat(node), props).await.map_err(|source| {
        if is_permanent(&source) {
            BrokerError::AccessRefused { url, source }
        } else {
            BrokerError::Unreachable { url, source }
        }
    })
}

/// Tries each node once, in order; `Unreachable` (naming them all) only when none answers. A
/// refusal for good (credentials) is the cluster's answer, not one node's: returned at once.
async fn open_first(opts: &BrokerOptions) -> Result<(usize, Connection), BrokerError> {
    let mut last = None;
    for node in rotation(opts.nodes.len(), None, 0).take(opts.nodes.len()) {
        match open(opts, node).await {
            Ok(c) => return Ok((node, c)),
            Err(BrokerError::Unreachable { source, .. }) if opts.nodes.len() > 1 => {
                tracing::warn!(node = %opts.nodes.redacted(node), error = %source, "broker node unreachable; trying the next");
                last = Some(source);
            }
            Err(e) => return Err(e),
        }
    }
    let source = last.expect("a list of several nodes was tried");
    Err(BrokerError::Unreachable { url: opts.nodes.redacted_all(), source })
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Get>, mut current: Conn) {
    while let Some(Get { stale, reply }) = rx.recv().await {
        let healthy = current.connection.status().connected() && stale != Some(current.generation);
        if healthy {
            let _ = reply.send(Ok(current.clone()));
            continue;
        }
        if *shared.closed.borrow() {
            // No new connection once closed: a caller asking for one would only spin.
            let answer = if stale.is_none() { Ok(current.clone()) } else { Err(BrokerError::Closed) };
            let _ = reply.send(answer);
            continue;
        }
        match reconnect(&shared, current.node).await {
            Ok((node, connection)) => {
                let next = Conn { generation: current.generation + 1, connection: Arc::new(connection), node };
                let old = std::mem::replace(&mut current, next);
                // A caller may report a connection stale that still works (a channel of it
                // failed); left open, each such report would leave one more connection behind.
                if old.connection.status().connected() {
                    tokio::spawn(async move {
                        let closing = old.connection.close(200, "replaced".into());
                        tokio::time::timeout(OP_TIMEOUT, closing).await.ok();
                    });
                }
                let n = shared.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    connection = %shared.opts.connection_name,
                    node = %shared.opts.nodes.redacted(node),
                    generation = current.generation,
                    reconnects = n,
                    "reconnected to the broker"
                );
                let _ = reply.send(Ok(current.clone()));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    current.connection.close(200, "link dropped".into()).await.ok();
}

/// Connects and declares, retrying what can clear up, on the other nodes first (`rotation`);
/// returns early once the link is closed.
async fn reconnect(shared: &Shared, failed: usize) -> Result<(usize, Connection), BrokerError> {
    let mut closed = shared.closed.subscribe();
    let mut delay = BACKOFF_FIRST;
    let round = shared.opts.nodes.len();
    let spread = spread_of(&shared.opts.connection_name);
    for (attempt, node) in (1u64..).zip(rotation(round, Some(failed), spread)) {
        let shape = *shared.shape.lock().expect("shape lock");
        let attempted = async {
            let connection = open(&shared.opts, node).await?;
            if let Some(shape) = shape {
                declare_on(&connection, &shared.opts, &shape).await?;
            }
            Ok::<_, BrokerError>(connection)
        };
        let attempted = async {
            tokio::time::timeout(OP_TIMEOUT * 2, attempted).await.unwrap_or_else(|_| {
                Err(BrokerError::Unreachable {
                    url: shared.opts.nodes.redacted(node),
                    source: lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                })
            })
        };
        match attempted.await {
            Ok(c) => return Ok((node, c)),
            Err(e) if e.class() == pdq_protocol::ErrorClass::Fatal => {
                tracing::error!(error = %e, "the broker refused pdq for good");
                return Err(e);
            }
            Err(e) => tracing::warn!(attempt, error = %e, "broker node unavailable; retrying"),
        }
        // The next node of a round is tried at once (another node is likely up); a round that
        // found none waits, so a cluster that is down entirely is not hammered.
        if attempt % round as u64 != 0 {
            if *shared.closed.borrow() {
                return Err(BrokerError::Closed);
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(delay)) => {}
            _ = closed.wait_for(|c| *c) => return Err(BrokerError::Closed),
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
    unreachable!("the retry loop only ends by returning")
}

/// Between half and all of `d`, so processes that lost the broker together do not come back in
/// lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}
