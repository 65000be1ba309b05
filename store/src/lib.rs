//! PostgreSQL: the schema users query (CONTRACT §5) and every read and write pdq makes of it.
//! Queries are checked at run time (`sqlx::query`), so the workspace builds without a database.

mod accept;
mod batches;
mod ceiling;
mod connect;
mod error;
mod feed;
mod files;
mod jobs;
mod requests;
mod results;
mod webhooks;
mod workers;

pub use accept::Accepting;
pub use batches::{BatchRow, NewBatch};
pub use connect::Store;
pub use error::StoreError;
pub use feed::{Ask, FeedJob, FeederLease, InFlight, Unpublished};
pub use files::{FileRow, FileUpload, ListOrder, NewFile};
pub use jobs::{JobRow, JobStatus, NewJob, Usage, DEFAULT_COMPLETION_WINDOW};
pub use requests::{NewRequest, Outbound};
pub use results::{ExportRow, ResultsWritten};
pub use webhooks::WebhookEvent;
pub use workers::WorkerInfo;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
