//! Wire types and validation shared by every side of pdq: the input line (OpenAI Batch format),
//! its conversion into a [`ValidRequest`], the DP-routing rules of the contract (§3), the KV handle
//! that crosses from prefill to decode, the result record, and the queue names of a namespace.
//!
//! Nothing here does I/O: producers, workers and tests all agree on one definition.

pub mod choice;
pub mod embeddings;
pub mod error;
pub mod features;
pub mod handle;
pub mod input;
pub mod names;
pub mod responses;
pub mod result;
pub mod route;
pub mod routing;
pub mod sampling;
pub mod unsupported;
pub mod url;
pub mod validate;

pub use choice::{Choice, TokenLogprob, TopLogprob};
pub use embeddings::{EmbedInput, EncodingFormat};
pub use error::{ErrorBody, ErrorClass, ValidationError};
pub use features::Constraint;
pub use handle::{FirstToken, HandleRequest, KvHandle, RawLogprob};
pub use input::{InputLine, RawLine};
pub use names::{Topology, READY_METRIC};
pub use result::{FinishReason, MetaInfo, Outcome, ResultStatus, Timings};
pub use route::{route, At, Route, Target};
pub use routing::{ClusterShape, Mode, Pins, Routing, WorkerRole, DEPRECATION_WARNING};
pub use sampling::Sampling;
pub use url::redact_url;
pub use validate::{validate, ChatMessage, Endpoint, Prompt, ValidRequest};
