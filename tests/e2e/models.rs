//! Every checkpoint layout the engine's fidelity fixtures cover (Qwen2 with qkv bias, bf16
//! weights, tied embeddings with Llama 3 rope scaling, a sharded Mistral) serves a batch end to
//! end, disaggregated, with the same tokens it gives colocated.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::Harness;
use pdq_engine::Model;
use pdq_producer::Policy;
use pdq_protocol::ClusterShape;
use serde_json::{json, Value};
use sqlx::PgPool;

fn batch() -> Vec<Value> {
    vec![
        json!({"custom_id": "text", "url": "/v1/completions", "body": {"prompt": "The river", "max_tokens": 6, "temperature": 0}}),
        json!({"custom_id": "chat", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0.7, "seed": 3}}),
        json!({"custom_id": "ids", "url": "/generate",
               "body": {"input_ids": [1, 2, 3, 4, 5], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}}),
    ]
}

async fn serve_fixture(pool: PgPool, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/golden").join(name);
    let model = Arc::new(Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}")));
    let mut outputs = Vec::new();
    for shape in [ClusterShape::disagg(1, 1), ClusterShape::colocated(1)] {
        let h = Harness::start_model(pool.clone(), shape, model.clone(), |_| {}).await;
        let r = h.run(&batch(), Policy::Shared).await;
        for (cid, row) in &r {
            assert_eq!(row.status, "completed", "{name} {cid}: {:?}", row.error);
            assert!(!row.output_ids.as_ref().unwrap().is_empty(), "{name} {cid}");
        }
        let mut ids: Vec<_> = r.into_iter().map(|(k, v)| (k, v.output_ids)).collect();
        ids.sort();
        outputs.push(ids);
        h.finish().await;
    }
    assert_eq!(outputs[0], outputs[1], "{name}: disaggregated and colocated agree");
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn qwen2_qkv_bias(pool: PgPool) {
    serve_fixture(pool, "qwen2-gqa-bias").await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn qwen2_bf16_weights(pool: PgPool) {
    serve_fixture(pool, "qwen2-gqa-bias-bf16").await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn llama3_tied_rope_scaling(pool: PgPool) {
    serve_fixture(pool, "llama3-tied-rope").await;
}

#[sqlx::test(migrator = "pdq_store::MIGRATOR")]
async fn mistral_sharded(pool: PgPool) {
    serve_fixture(pool, "mistral-window").await;
}
