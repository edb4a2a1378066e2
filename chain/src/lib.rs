//! # attrinet-chain
//!
//! attrinet on the EVM L2 (an OP Stack chain; anvil in `--optimism` mode locally):
//!
//! - the Solidity contracts in `chain/contracts/` — `Registry` (nodes, bonds, models and
//!   their terms), `Channels` (deposits, optimistic settlement, fraud proofs, data-reward
//!   claims) and `DataDisputes` (fraud proofs about data entries and weights) — with
//!   their committed build artifacts (`scripts/build-contracts`) and alloy bindings;
//! - [`ChainClient`]: deploy, register, open / top up / thaw / withdraw, settle, dispute,
//!   finalize, claim data rewards, and read state;
//! - [`examine`] and [`outsider`]: the off-chain checks of a settlement against the
//!   receipts (and weights, and data entries) behind it, which build the [`FraudProof`]
//!   the contracts accept; the payouts they check against are attrinet-market's
//!   (`payout_runs`, `CommittedData`);
//! - [`EventFollower`]: the contract's events, N confirmations deep, resumable from a
//!   durable [`Checkpoint`];
//! - [`SettlementLoop`] (run by a node) and [`Watcher`] (run by `attrinet watch`);
//! - [`Anvil`]: a local chain for tests and the devnet, killed when dropped.
//!
//! Receipts, vouchers and the Merkle-sum tree are specified in `docs/protocol.md`; how a
//! settlement is declared (payout runs) and what each dispute proves is documented in
//! `chain/contracts/Channels.sol`, and the gas it all costs in `docs/benchmarks.md`.
//!
//! Tests need the pinned anvil: run `scripts/setup-chain-tools` once (idempotent).
//!
//! ```no_run
//! # async fn demo() -> attrinet_chain::Result<()> {
//! use attrinet_chain::{Anvil, AnvilConfig, ChainClient, DeployConfig};
//! use attrinet_market::Wei;
//! let deployer = alloy::signers::local::PrivateKeySigner::from_bytes(&[7u8; 32].into())
//!     .expect("a valid secret key");
//! let anvil = Anvil::spawn(AnvilConfig::default())?;
//! anvil.fund(deployer.address(), alloy::primitives::U256::from(10u128.pow(20))).await?;
//! let config = DeployConfig {
//!     treasury: deployer.address(),
//!     challenge_window: 5,
//!     thaw_delay: 60,
//!     unbond_delay: 60,
//!     min_bond: Wei(10u128.pow(17)),
//! };
//! let deployment = ChainClient::deploy(&anvil.endpoint(), deployer, config).await?;
//! # let _ = deployment; Ok(()) }
//! ```

mod abi;
mod anvil;
mod attribution;
mod client;
mod error;
mod examine;
mod follower;
mod settlement;
mod types;
mod watcher;

pub use abi::data_disputes::DataDisputes;
pub use abi::{Channels, Registry};
pub use anvil::{Anvil, AnvilConfig};
pub use attribution::{AttributionSource, MemAttribution, weights_of};
pub use client::ChainClient;
pub use error::{AnvilError, BatchError, ChainError, CheckpointError, Result, RpcError};
pub use examine::{Registered, examine, outsider};
pub use follower::{ChannelEvent, Checkpoint, EventFollower, FileCheckpoint, FollowedEvent, MemCheckpoint};
pub use settlement::{SettleAction, SettlementLoop, SettlementPolicy};
pub use types::{
    Batch, ChannelInfo, Cursor, DeployConfig, Deployment, FraudProof, ModelTerms, PendingInfo, Settlement, SumPreimage,
    TxOutcome, Verdict, WeightLeaf, weights_root,
};
pub use watcher::{MemSource, ReceiptSource, StepReport, StoreSource, Watcher};
