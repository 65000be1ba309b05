//! The namespace's handle: one reconnecting [`Link`], from which it hands out publishers and
//! subscriptions, declares the topology (`topology.rs`) and answers queue questions.

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use pdq_protocol::{ClusterShape, Topology};

use crate::link::Link;
use crate::options::{BrokerOptions, QueueType};
use crate::topology::declare_on;
use crate::{BrokerError, Publisher, Subscription};

/// A reconnecting link to RabbitMQ scoped to one namespace.
pub struct Broker {
    link: Link,
    pub topology: Topology,
}

impl Broker {
    /// Connects with the default options (the connection is named `pdq:{namespace}`); `url` is
    /// one AMQP URL or the nodes of one cluster, comma-separated.
    pub async fn connect(url: &str, namespace: &str) -> Result<Broker, BrokerError> {
        Broker::connect_with(BrokerOptions::on(url.parse()?, namespace)).await
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

    /// The URL (with the heartbeat) of the node the link is on now, for connections of its own
    /// beside the link's (the ceiling measurement).
    pub(crate) async fn current_url(&self) -> Result<String, BrokerError> {
        let conn = self.link.get(None).await?;
        Ok(self.options().url_with_heartbeat(conn.node))
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
