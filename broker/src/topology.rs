//! Declares a namespace's exchanges and queues. Every declarer passes the same arguments, so a
//! producer, a worker and a test starting in any order agree (RabbitMQ refuses a redeclaration
//! with different arguments).

use futures_util::stream::{select_all, SelectAll};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use pdq_protocol::{redact_url, ClusterShape, Topology};

use crate::{BrokerError, Publisher};

/// A connection to RabbitMQ scoped to one namespace.
pub struct Broker {
    conn: Connection,
    pub topology: Topology,
}

impl Broker {
    pub async fn connect(url: &str, namespace: &str) -> Result<Broker, BrokerError> {
        let props = ConnectionProperties::default().with_connection_name(format!("pdq:{namespace}").into());
        let conn = Connection::connect(url, props)
            .await
            .map_err(|source| BrokerError::Unreachable { url: redact_url(url), source })?;
        Ok(Broker { conn, topology: Topology::new(namespace) })
    }

    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.conn.create_channel().await?)
    }

    /// A channel in confirm mode: every publish waits for the broker to take responsibility.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        Publisher::new(self.channel().await?).await
    }

    /// Declares every exchange and queue of the namespace for a cluster of this shape.
    pub async fn declare(&self, shape: &ClusterShape) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        let t = &self.topology;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(t.dead().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
        ch.queue_declare(t.dead().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
        ch.queue_bind(t.dead().into(), t.dead().into(), "".into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
        ch.exchange_declare(t.unroutable().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
        ch.queue_declare(t.unroutable().into(), QueueDeclareOptions::durable(), self.queue_args()).await?;
        ch.queue_bind(
            t.unroutable().into(),
            t.unroutable().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut prefill_args = FieldTable::default();
        prefill_args.insert("alternate-exchange".into(), AMQPValue::LongString(LongString::from(t.unroutable())));
        ch.exchange_declare(t.prefill_exchange().into(), ExchangeKind::Direct, durable, prefill_args)
            .await
            .map_err(|source| BrokerError::Topology { what: "exchange", name: t.prefill_exchange(), source })?;
        ch.exchange_declare(t.kv_exchange().into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        let mut bindings = vec![(t.prefill_exchange(), t.prefill_any_queue(), Topology::ANY.to_string())];
        for p in 0..shape.prefill_dp {
            bindings.push((t.prefill_exchange(), t.prefill_rank_queue(p), p.to_string()));
            bindings.push((t.kv_exchange(), t.kv_queue(p), Topology::kv_key(p, None)));
            for d in 0..shape.decode_dp {
                bindings.push((t.kv_exchange(), t.kv_pinned_queue(p, d), Topology::kv_key(p, Some(d))));
            }
        }
        for (exchange, queue, key) in bindings {
            ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), self.queue_args()).await?;
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        ch.close(200, "declared".into()).await.ok();
        Ok(())
    }

    /// Rejected (nacked without requeue) messages go to `{ns}.dead`.
    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(self.topology.dead())));
        args
    }

    /// Consumes several queues on one channel; `prefetch` bounds unacked messages per queue.
    pub async fn consume(
        &self,
        queues: &[String],
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, SelectAll<Consumer>), BrokerError> {
        let ch = self.channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumers = Vec::with_capacity(queues.len());
        for (i, q) in queues.iter().enumerate() {
            let c = ch
                .basic_consume(
                    q.as_str().into(),
                    format!("{tag}-{i}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(c);
        }
        Ok((ch, select_all(consumers)))
    }

    /// Ready messages in a queue (a passive declare; 0 when the queue does not exist).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
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
        let ch = self.channel().await?;
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

    pub async fn close(&self) {
        self.conn.close(200, "bye".into()).await.ok();
    }
}
