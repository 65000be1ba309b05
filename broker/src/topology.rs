//! Declares a namespace's exchanges and queues. Every declarer passes the same arguments, so a
//! producer, a worker and a test starting in any order agree (RabbitMQ refuses a redeclaration
//! with different arguments), and a reconnect declares them again.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};
use pdq_protocol::{ClusterShape, Topology};

use crate::error::is_permanent;
use crate::options::{BrokerOptions, QueueType};
use crate::BrokerError;

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
    // The dead-letter queue is where people inspect failures: never expiring, no dead-letter
    // exchange of its own. Of the configured type: a classic queue lives on one node, and while
    // that node is down a broker cluster refuses to declare it (404, "home node ... is down"),
    // which would keep every process from reconnecting to the surviving nodes.
    ch.queue_declare(t.dead().into(), QueueDeclareOptions::durable(), dead_queue_args(opts))
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

fn dead_queue_args(opts: &BrokerOptions) -> FieldTable {
    let mut args = FieldTable::default();
    if opts.queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    }
    args
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
