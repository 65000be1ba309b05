//! The producer side: `pdq submit` (validate a batch file, record it, dispatch and publish its
//! requests), job status and progress, cancellation, and the OpenAI Batch output export.

mod dispatch;
mod error;
mod export;
mod progress;
mod shape;
mod submit;

pub use dispatch::{Assignment, Dispatcher, Policy};
pub use error::ProducerError;
pub use export::{export_line, export_lines, ExportKind};
pub use progress::{wait_for_job, WaitMode};
pub use shape::cluster_shape;
pub use submit::{parse_batch, submit, submit_text, BatchInput, BatchPlan, SubmitOptions, SubmitReport};
