//! Declares a namespace's exchanges and queues. Every declarer passes the same arguments, so a
//! producer, a worker and a test starting in any order agree (RabbitMQ refuses a redeclaration
//! with different arguments), and a reconnect declares them again.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};
use pdq_protocol::{ClusterShape, Topology};

use crate::error::is_permanent;
use crate::link::Link;
use crate::options::{BrokerOptions, QueueType};
use crate::{BrokerError, Publisher, Subscription};

/// A reconnecting link to RabbitMQ scoped to one namespace.
pub struct Broker {
    link: Link,
    pub topology: Topology,
}

impl Broker {
    /// Connects with the default options (the connection is named `pdq:{namespace}`).
    pub async fn connect(url: &str, namespace: &str) -> Result<Broker, BrokerError> {
        Broker::connect_with(BrokerOptions::new(url, namespace)).await
    }

    pub async fn connect_with(opts: BrokerOptions) -> Result<Broker, BrokerError> {
        let topology = Topology::new(&opts.namespace);
        Ok(Broker { link: Link::connect(opts).await?, topology })
    }

    /// A publisher in confirm mode that survives reconnects.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.link.clone())
    }

    /// Consumes `queues` until cancelled, across reconnects; see [`Subscription`].
    pub async fn subscribe(&self, queues: &[String], prefetch: u16, tag: &str) -> Result<Subscription, BrokerError> {
        Subscription::start(self.link.clone(), queues.to_vec(), prefetch, tag.to_string()).await
    }

    /// Declares every exchange and queue of the namespace for a cluster of this shape, now and
    /// after every reconnect.
    pub async fn declare(&self, shape: &ClusterShape) -> Result<(), BrokerError> {
        let conn = self.link.get(None).await?;
        declare_on(&conn.connection, self.link.options(), shape).await?;
        self.link.set_shape(*shape);
        Ok(())
    }

    /// Times this process had to connect again after losing the broker.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }

    /// The same count, for a task that outlives this handle's borrow (metrics).
    pub fn reconnect_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.link.reconnect_counter()
    }

    pub fn options(&self) -> &BrokerOptions {
        self.link.options()
    }

    /// Ready messages in a queue (a passive declare; 0 when the queue does not exist).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let conn = self.link.get(None).await?;
        let ch = conn.connection.create_channel().await?;
        let opts = QueueDeclareOptions { passive: true, ..Default::default() };
        let depth = match ch.queue_declare(queue.into(), opts, FieldTable::default()).await {
            Ok(q) => q.message_count(),
            Err(_) => return Ok(0),
        };
        ch.close(200, "depth".into()).await.ok();
        Ok(depth)
    }

    /// Removes every queue and exchange of the namespace (tests, and `pdq` namespaces retired by hand).
    pub async fn delete_namespace(&self, shape: &ClusterShape) -> Result<(), BrokerError> {
        let conn = self.link.get(None).await?;
        let ch = conn.connection.create_channel().await?;
        let t = &self.topology;
        let mut queues = vec![t.prefill_any_queue(), t.dead(), t.unroutable()];
        for p in 0..shape.prefill_dp {
            queues.push(t.prefill_rank_queue(p));
            queues.push(t.kv_queue(p));
            for d in 0..shape.decode_dp {
                queues.push(t.kv_pinned_queue(p, d));
            }
        }
        for q in queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default()).await?;
        }
        for e in [t.prefill_exchange(), t.kv_exchange(), t.dead(), t.unroutable()] {
            ch.exchange_delete(e.into(), ExchangeDeleteOptions::default()).await?;
        }
        Ok(())
    }

    /// A durable queue of the configured type outside the namespace's topology (benchmarks
    /// measure the bare broker on one).
    pub async fn declare_scratch_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let conn = self.link.get(None).await?;
        let ch = conn.connection.create_channel().await?;
        let mut args = FieldTable::default();
        if self.options().queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        }
        ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args).await?;
        ch.close(200, "declared".into()).await.ok();
        Ok(())
    }

    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let conn = self.link.get(None).await?;
        let ch = conn.connection.create_channel().await?;
        ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
        ch.close(200, "deleted".into()).await.ok();
        Ok(())
    }

    pub async fn close(&self) {
        self.link.close().await;
    }
}

pub(crate) async fn declare_on(
    conn: &Connection,
    opts: &BrokerOptions,
    shape: &ClusterShape,
) -> Result<(), BrokerError> {
    let ch = conn.create_channel().await?;
    let t = Topology::new(&opts.namespace);
    let conflict = |what: &'static str, name: String| {
        move |source: lapin::Error| {
            if is_permanent(&source) {
                BrokerError::Topology { what, name, source }
            } else {
                BrokerError::Amqp(source)
            }
        }
    };
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let none = FieldTable::default;
    ch.exchange_declare(t.dead().into(), ExchangeKind::Fanout, durable, none())
        .await
        .map_err(conflict("exchange", t.dead()))?;
    // The dead-letter queue is where people inspect failures: always classic, never expiring.
    ch.queue_declare(t.dead().into(), QueueDeclareOptions::durable(), none())
        .await
        .map_err(conflict("queue", t.dead()))?;
    ch.queue_bind(t.dead().into(), t.dead().into(), "".into(), QueueBindOptions::default(), none()).await?;
    ch.exchange_declare(t.unroutable().into(), ExchangeKind::Fanout, durable, none())
        .await
        .map_err(conflict("exchange", t.unroutable()))?;
    let mut prefill_args = FieldTable::default();
    prefill_args.insert("alternate-exchange".into(), AMQPValue::LongString(LongString::from(t.unroutable())));
    ch.exchange_declare(t.prefill_exchange().into(), ExchangeKind::Direct, durable, prefill_args)
        .await
        .map_err(conflict("exchange", t.prefill_exchange()))?;
    ch.exchange_declare(t.kv_exchange().into(), ExchangeKind::Direct, durable, none())
        .await
        .map_err(conflict("exchange", t.kv_exchange()))?;
    let mut bindings = vec![
        (t.unroutable(), t.unroutable(), String::new()),
        (t.prefill_exchange(), t.prefill_any_queue(), Topology::ANY.to_string()),
    ];
    for p in 0..shape.prefill_dp {
        bindings.push((t.prefill_exchange(), t.prefill_rank_queue(p), p.to_string()));
        bindings.push((t.kv_exchange(), t.kv_queue(p), Topology::kv_key(p, None)));
        for d in 0..shape.decode_dp {
            bindings.push((t.kv_exchange(), t.kv_pinned_queue(p, d), Topology::kv_key(p, Some(d))));
        }
    }
    let args = queue_args(opts, &t);
    for (exchange, queue, key) in bindings {
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args.clone())
            .await
            .map_err(conflict("queue", queue.clone()))?;
        ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), none()).await?;
    }
    ch.close(200, "declared".into()).await.ok();
    Ok(())
}

/// Rejected messages go to `{ns}.dead`; the queue type and the consumer timeout are the
/// operator's choice.
fn queue_args(opts: &BrokerOptions, t: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(t.dead())));
    if opts.queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    }
    args.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(opts.consumer_timeout.as_millis() as i64));
    args
}
