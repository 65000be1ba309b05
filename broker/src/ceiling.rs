//! The bare broker's speed, for `pdq bench` to hold pdq against: what RabbitMQ does with these
//! messages when the client does nothing else. Publishers and consumers run at once, on their own
//! connections (as separate processes would), over `lanes` queues in parallel (a stage's ranks);
//! messages are persistent, published with a sliding window of unconfirmed messages, consumed
//! with a deep prefetch and acked in batches (`multiple`). A ceiling measured any weaker would
//! flatter every ratio printed against it.

use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

use crate::{Broker, BrokerError};

/// How a ceiling run drives the broker.
#[derive(Debug, Clone, Copy)]
pub struct CeilingOptions {
    /// Messages published per lane.
    pub messages: usize,
    /// Queues driven in parallel, each with its own publisher and consumer connection.
    pub lanes: usize,
    /// Unconfirmed messages a publisher keeps in flight.
    pub confirm_window: usize,
    pub prefetch: u16,
    /// Deliveries acked together with one `multiple` ack.
    pub ack_every: usize,
}

impl Default for CeilingOptions {
    fn default() -> Self {
        CeilingOptions { messages: 5_000, lanes: 2, confirm_window: 512, prefetch: 1024, ack_every: 64 }
    }
}

/// Messages per second, published and consumed, over every lane: from the first publish to the
/// last ack.
pub async fn broker_ceiling(
    broker: &Broker,
    queue_prefix: &str,
    body: &[u8],
    opts: CeilingOptions,
) -> Result<f64, BrokerError> {
    let url = broker.current_url().await?;
    let queues: Vec<String> = (0..opts.lanes).map(|i| format!("{queue_prefix}.{i}")).collect();
    for q in &queues {
        broker.declare_scratch_queue(q).await?;
    }
    let mut conns = Vec::new();
    for (i, _) in queues.iter().enumerate() {
        for side in ["pub", "sub"] {
            let props =
                ConnectionProperties::default().with_connection_name(format!("{queue_prefix}:{side}{i}").into());
            conns.push(Connection::connect(&url, props).await?);
        }
    }
    let started = Instant::now();
    let mut lanes: Vec<futures_util::future::BoxFuture<'_, Result<(), BrokerError>>> = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        lanes.push(Box::pin(publish_lane(&conns[2 * i], q, body, opts)));
        lanes.push(Box::pin(consume_lane(&conns[2 * i + 1], q, opts)));
    }
    let results = futures_util::future::join_all(lanes).await;
    let secs = started.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    if let Some(c) = conns.first() {
        let ch = c.create_channel().await?;
        for q in &queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
        }
    }
    for c in conns {
        c.close(200, "ceiling measured".into()).await.ok();
    }
    Ok((opts.messages * opts.lanes) as f64 / secs)
}

async fn publish_lane(conn: &Connection, queue: &str, body: &[u8], opts: CeilingOptions) -> Result<(), BrokerError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..opts.messages {
        while in_flight.len() >= opts.confirm_window {
            confirmed(in_flight.next().await)?;
        }
        let confirm =
            ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props.clone()).await?;
        in_flight.push(confirm);
    }
    while let Some(c) = in_flight.next().await {
        confirmed(Some(c))?;
    }
    Ok(())
}

fn confirmed(c: Option<Result<Confirmation, lapin::Error>>) -> Result<(), BrokerError> {
    match c {
        Some(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) | None => Ok(()),
        Some(Ok(Confirmation::Nack(_))) => Err(BrokerError::Stalled("the broker nacked a ceiling message")),
        Some(Err(e)) => Err(e.into()),
    }
}

async fn consume_lane(conn: &Connection, queue: &str, opts: CeilingOptions) -> Result<(), BrokerError> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(opts.prefetch, BasicQosOptions::default()).await?;
    let mut consumer =
        ch.basic_consume(queue.into(), "ceiling".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let multiple = BasicAckOptions { multiple: true };
    let mut unacked = 0;
    for n in 1..=opts.messages {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let delivery = match next {
            Ok(Some(d)) => d?,
            Ok(None) | Err(_) => {
                return Err(BrokerError::Stalled("the ceiling's consumer ended before the last message"))
            }
        };
        unacked += 1;
        if unacked == opts.ack_every || n == opts.messages {
            ch.basic_ack(delivery.delivery_tag, multiple).await?;
            unacked = 0;
        }
    }
    Ok(())
}
