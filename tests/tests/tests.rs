//! attrinet's cross-crate integration tests: one binary, one module per area.

mod crash;
mod store;
