//! The producer side: `pdq submit` (validate a batch file and accept it as a job), the feeder
//! (publish accepted jobs' requests, fairly, a bounded window at a time), job status and
//! progress, and the OpenAI Batch output export.

mod dispatch;
mod error;
mod export;
pub mod feeder;
mod lines;
mod progress;
mod shape;
mod submit;

pub use dispatch::{prefix_key, rendezvous_order, Assignment, Dispatcher, Policy, LOAD_SLACK, PREFIX_KEY_BYTES};
pub use error::ProducerError;
pub use export::{export_line, export_lines, ExportKind};
pub use lines::Lines;
pub use progress::{wait_for_job, WaitMode};
pub use shape::cluster_shape;
pub use submit::{check_line, submit, submit_lines, BatchSource, CheckedLine, SubmitOptions, SubmitReport};
