//! The worker registry. Each worker upserts its row at start and refreshes `heartbeat_at`; a
//! producer takes the cluster's DP sizes from the rows that are still beating.

use chrono::{DateTime, Utc};
use pdq_protocol::{ClusterShape, Mode, WorkerRole};

use crate::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerInfo {
    pub namespace: String,
    #[sqlx(try_from = "String")]
    pub role: WorkerRole,
    pub dp_rank: i32,
    pub prefill_dp: i32,
    pub decode_dp: i32,
    #[sqlx(try_from = "String")]
    pub mode: Mode,
    pub endpoint: Option<String>,
    pub host: String,
    pub pid: i32,
    pub model: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

impl WorkerInfo {
    pub fn shape(&self) -> ClusterShape {
        ClusterShape { prefill_dp: self.prefill_dp as u32, decode_dp: self.decode_dp as u32, mode: self.mode }
    }
}

impl Store {
    pub async fn register_worker(&self, w: &WorkerInfo) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (namespace, role, dp_rank, prefill_dp, decode_dp, mode, endpoint, host, pid, model)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (namespace, role, dp_rank) DO UPDATE SET
               prefill_dp = EXCLUDED.prefill_dp, decode_dp = EXCLUDED.decode_dp, mode = EXCLUDED.mode,
               endpoint = EXCLUDED.endpoint, host = EXCLUDED.host, pid = EXCLUDED.pid, model = EXCLUDED.model,
               started_at = now(), heartbeat_at = now()",
        )
        .bind(&w.namespace)
        .bind(w.role.as_str())
        .bind(w.dp_rank)
        .bind(w.prefill_dp)
        .bind(w.decode_dp)
        .bind(w.mode.to_string())
        .bind(&w.endpoint)
        .bind(&w.host)
        .bind(w.pid)
        .bind(&w.model)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, namespace: &str, role: WorkerRole, rank: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE namespace = $1 AND role = $2 AND dp_rank = $3")
            .bind(namespace)
            .bind(role.as_str())
            .bind(rank as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn deregister_worker(&self, namespace: &str, role: WorkerRole, rank: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE namespace = $1 AND role = $2 AND dp_rank = $3")
            .bind(namespace)
            .bind(role.as_str())
            .bind(rank as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Workers of a namespace whose heartbeat is younger than `max_age_s`.
    pub async fn live_workers(&self, namespace: &str, max_age_s: f64) -> Result<Vec<WorkerInfo>, StoreError> {
        Ok(sqlx::query_as::<_, WorkerInfo>(
            "SELECT namespace, role, dp_rank, prefill_dp, decode_dp, mode, endpoint, host, pid, model, started_at, heartbeat_at
             FROM workers WHERE namespace = $1 AND heartbeat_at > now() - make_interval(secs => $2)
             ORDER BY role, dp_rank",
        )
        .bind(namespace)
        .bind(max_age_s)
        .fetch_all(&self.pool)
        .await?)
    }
}
