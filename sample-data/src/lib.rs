//! Sample data: a deterministic generator of realistic agent traffic, and the sender that
//! replays it over OTLP (the `runledger gen` command and the load generator of the
//! benchmarks).
//!
//! The traffic has what a real deployment of agents has: several workflows (refunds, support
//! triage, incident remediation, sales ops) run by their agents on models of several
//! providers; model calls with cached and reasoning tokens; tool calls with read and write
//! side effects and the ids of what they changed; failures, retries, escalations to humans,
//! the occasional runaway loop; and prompts and tool arguments full of personal data and
//! credentials, which the privacy tier must catch. The same seed gives the same traffic.
#![deny(missing_docs)]

mod generator;
mod protobuf;
mod sender;

pub use generator::{GeneratedRun, Generator, GeneratorOptions, WORKFLOWS};
pub use sender::{export_encoded, send, Protocol, SendError, SendOptions, SendReport};
