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
//! - data rewards ([`attributed_payout_runs`], [`CommittedData`], [`DataClaim`]): the
//!   per-contributor entries a settlement commits to and claims against them, and the
//!   datanet files ([`build_datanet_dir`], [`save_datanet`], [`load_datanet`]);
//! - [`examine`]: the off-chain check of a settlement against the receipts behind it,
//!   which builds the [`FraudProof`] the contract accepts;
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

mod anvil;
mod batch;
mod bindings;
mod client;
mod data;
mod datanet;
mod error;
mod follower;
mod settlement;
mod watcher;

pub use anvil::{Anvil, AnvilConfig};
pub use batch::{
    Batch, CommittedTree, FraudProof, PayoutRun, Settlement, SumPreimage, Verdict, examine, payout_runs, payout_totals,
};
pub use bindings::data_disputes::DataDisputes;
pub use bindings::{Channels, Registry};
pub use client::{ChainClient, ChannelInfo, DeployConfig, Deployment, ModelTerms, PendingInfo, TxOutcome};
pub use data::{
    AttributionSource, CommittedData, DataClaim, DataCommitment, MemAttribution, WeightLeaf, attributed_payout_runs,
    contributor_totals, weights_of, weights_root,
};
pub use datanet::{build_datanet_dir, load_datanet, read_datanet_dir, save_datanet};
pub use error::{ChainError, Result};
pub use follower::{ChannelEvent, Checkpoint, Cursor, EventFollower, FileCheckpoint, FollowedEvent, MemCheckpoint};
pub use settlement::{SettleAction, SettlementLoop, SettlementPolicy};
pub use watcher::{MemSource, ReceiptSource, StepReport, StoreSource, Watcher};
