//! # attrinet-chain
//!
//! attrinet on the EVM L2. This crate will own:
//!
//! - the Solidity contracts (`Registry`, `Channels` with settlement and fraud proofs), their
//!   committed build artifacts and alloy bindings;
//! - the settlement client (deploy, register, open/top-up/thaw/withdraw, settle, dispute,
//!   finalize) and an event follower that survives restarts;
//! - the settlement loop a node runs and the watcher that disputes bad settlements.
