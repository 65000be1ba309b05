//! Consuming across reconnects, with a bound on deliveries.
//!
//! A background task consumes the queues on one channel and hands each delivery over as an
//! [`Inbound`]. When the connection dies it asks the link for the next one and consumes again;
//! the messages it held unacked are redelivered by the broker, to this or another worker.
//!
//! Poison: RabbitMQ marks a message `redelivered` when a consumer died (or hung past its
//! heartbeat) holding it. Such a message is published again with `x-pdq-deliveries` counted up
//! and the original acked, so the count survives the next crash; past `max_deliveries` it is
//! handed over `poisoned`, to end as a failed row and a dead letter instead of another round.

use std::sync::Arc;

use futures_util::stream::{select_all, BoxStream};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, watch};

use crate::link::{Conn, Link};
use crate::options::OP_TIMEOUT;
use crate::{BrokerError, Inbound, MessageMeta, Outgoing, Publisher, Settlement};

type Deliveries = BoxStream<'static, (usize, Result<Delivery, lapin::Error>)>;

/// Deliveries from a set of queues; `next` yields until the subscription is cancelled or the
/// broker refuses pdq for good (the error is the last item).
pub struct Subscription {
    rx: mpsc::Receiver<Result<Inbound, BrokerError>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Consuming {
    link: Link,
    queues: Vec<String>,
    prefetch: u16,
    tag: String,
    republisher: Arc<Publisher>,
}

impl Subscription {
    /// Starts consuming; a queue that is missing or refused fails here, at start.
    pub(crate) async fn start(
        link: Link,
        queues: Vec<String>,
        prefetch: u16,
        tag: String,
    ) -> Result<Subscription, BrokerError> {
        let republisher = Arc::new(Publisher::new(link.clone()));
        let c = Consuming { link, queues, prefetch, tag, republisher };
        let conn = c.link.get(None).await?;
        let first = c.open(&conn).await?;
        let (tx, rx) = mpsc::channel(c.prefetch.max(1) as usize);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(c.run(conn.generation, first, tx, stop_rx));
        Ok(Subscription { rx, stop, task })
    }

    pub async fn next(&mut self) -> Option<Result<Inbound, BrokerError>> {
        self.rx.recv().await
    }

    /// Stops new deliveries. Messages delivered but not taken with `next` go back to the queue;
    /// the ones already taken keep their channel open until they are settled.
    pub async fn cancel(self) {
        let _ = self.stop.send(true);
        drop(self.rx);
        self.task.await.ok();
    }
}

impl Consuming {
    fn consumer_tag(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    async fn open(&self, conn: &Conn) -> Result<(Channel, Deliveries), BrokerError> {
        let ch = conn.connection.create_channel().await?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
        let mut streams = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            let consumer = ch
                .basic_consume(
                    q.as_str().into(),
                    self.consumer_tag(i).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| match crate::error::reply_code(&source) {
                    Some(404 | 403 | 406) => BrokerError::Topology { what: "queue", name: q.clone(), source },
                    _ => BrokerError::Amqp(source),
                })?;
            streams.push(consumer.map(move |d| (i, d)).boxed());
        }
        Ok((ch, select_all(streams).boxed()))
    }

    async fn run(
        self,
        mut generation: u64,
        first: (Channel, Deliveries),
        tx: mpsc::Sender<Result<Inbound, BrokerError>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut current = Some(first);
        loop {
            let (channel, mut deliveries) = match current.take() {
                Some(c) => c,
                None => match self.reopen(generation, &mut stop).await {
                    Ok(Some((g, c))) => {
                        generation = g;
                        c
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            loop {
                tokio::select! {
                    _ = stop.changed() => {
                        for i in 0..self.queues.len() {
                            let cancel = channel.basic_cancel(self.consumer_tag(i).as_str().into(), BasicCancelOptions::default());
                            if tokio::time::timeout(OP_TIMEOUT, cancel).await.is_err() {
                                tracing::warn!(consumer = %self.tag, "cancelling a consumer timed out");
                            }
                        }
                        return;
                    }
                    next = deliveries.next() => match next {
                        Some((i, Ok(d))) => {
                            if let Some(inbound) = self.inbound(i, d, &channel).await {
                                if tx.send(Ok(inbound)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Some((_, Err(e))) => {
                            tracing::warn!(error = %e, consumer = %self.tag, "consumer lost its channel; consuming again");
                            break;
                        }
                        None => {
                            tracing::warn!(consumer = %self.tag, "the broker ended the consumer; consuming again");
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Consumes again on a connection newer than `stale`; `None` once stopped.
    async fn reopen(
        &self,
        stale: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<(u64, (Channel, Deliveries))>, BrokerError> {
        let mut stale = Some(stale);
        loop {
            let attempt = async {
                let conn = self.link.get(stale).await?;
                let opened = match tokio::time::timeout(OP_TIMEOUT, self.open(&conn)).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        Err(BrokerError::Amqp(lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut))))
                    }
                };
                Ok::<_, BrokerError>((conn.generation, opened))
            };
            let (generation, opened) = tokio::select! {
                _ = stop.changed() => return Ok(None),
                r = attempt => r?,
            };
            match opened {
                Ok(c) => return Ok(Some((generation, c))),
                Err(e) if e.class() == pdq_protocol::ErrorClass::Fatal => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "consuming again failed; retrying");
                    stale = Some(generation);
                }
            }
        }
    }

    /// The delivery as an [`Inbound`], or `None` when it was republished with its count.
    async fn inbound(&self, i: usize, d: Delivery, channel: &Channel) -> Option<Inbound> {
        let queue = self.queues[i].clone();
        let mut meta = MessageMeta::from_headers(d.properties.headers().as_ref());
        let route = (d.exchange.as_str().to_string(), d.routing_key.as_str().to_string());
        meta.first_route.get_or_insert(route);
        let body: Arc<[u8]> = d.data.into();
        let deliveries = meta.deliveries + 1 + u32::from(d.redelivered);
        let poisoned = deliveries > self.link.options().max_deliveries;
        if d.redelivered && !poisoned {
            // Count it where the next consumer will see it, then let go of the original.
            meta.deliveries += 1;
            let copy = Outgoing { exchange: String::new(), key: queue.clone(), body: body.to_vec(), meta };
            match self.republisher.publish(&copy).await {
                Ok(()) => {
                    let _ = tokio::time::timeout(OP_TIMEOUT, d.acker.ack(Default::default())).await;
                }
                Err(e) => tracing::warn!(error = %e, "could not count a redelivery; the broker keeps it"),
            }
            return None;
        }
        let settlement = Settlement::new(
            d.acker,
            channel.clone(),
            queue.clone(),
            body.clone(),
            meta.clone(),
            self.republisher.clone(),
        );
        // Handlers see the original route; the header only carries it across pdq's own copies.
        let (exchange, routing_key) = meta.first_route.clone().unwrap_or_default();
        Some(Inbound { body, meta, exchange, routing_key, queue, deliveries, poisoned, settlement })
    }
}
