//! # attrinet-node
//!
//! Composition of attrinet: the `attrinet` binary's pieces. The durable sled-backed
//! [`SledStore`]; the node's keys on disk; the compute engine as the network's
//! [`EngineGenerator`]; the OpenAI-compatible [`gateway`]; Prometheus [`Metrics`]; and the
//! one-command [`devnet`].

pub mod client;
pub mod config;
pub mod datanet;
pub mod devnet;
mod earnings;
mod engine;
pub mod gateway;
pub mod keys;
pub mod loopback;
mod metrics;
pub mod pool;
pub mod serve;
mod store;
pub mod watch;

pub use earnings::{Earnings, earnings};
pub use engine::{EngineGenerator, PromptCount, Speed};
pub use metrics::{Metrics, provider_metrics};
pub use store::{Audit, SledStore, audit};
