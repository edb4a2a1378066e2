//! # attrinet-node
//!
//! Composition of attrinet: the `attrinet` binary's CLI and configuration, the durable
//! sled-backed [`SledStore`], and (as the other crates land) the gateway, the settlement
//! loop and the wiring of network, engine and chain.

mod store;

pub use store::{Audit, SledStore, audit};
