//! What each kind of rank does with a message it consumed: read it, decide, and return one
//! `Decision` (`crate::decision`), which the worker carries out.

pub mod colocated;
pub mod decode;
mod embed;
pub mod intake;
pub mod prefill;
