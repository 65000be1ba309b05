use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Postgres;

use crate::{StoreError, MIGRATOR};

/// A connection pool to pdq's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: PgPool,
}

impl Store {
    /// Connects, creating the database if it is missing, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let exists = Postgres::database_exists(url).await.map_err(|e| StoreError::unreachable(url, e))?;
        if !exists {
            // Two processes starting together may both try; the loser sees "already exists".
            if let Err(e) = Postgres::create_database(url).await {
                if !Postgres::database_exists(url).await.unwrap_or(false) {
                    return Err(StoreError::unreachable(url, e));
                }
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::unreachable(url, e))?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    /// Wraps an existing pool (tests get theirs from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
