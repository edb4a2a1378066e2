//! The crate's errors, one enum per subsystem: talking to a node ([`RpcError`]), running
//! anvil ([`AnvilError`]), the follower's checkpoint file ([`CheckpointError`]) and batches
//! that do not hold together ([`BatchError`]). [`ChainError`] is what the crate's
//! functions return: one of those, a refusal by the chain's state, or a market rule.

use std::path::PathBuf;

use alloy::primitives::{Address, B256};
use attrinet_market::{ChannelId, MarketError, ModelId, PayoutError, Seq, StoreError};

/// Everything that can go wrong talking to the chain, running anvil, or settling and
/// watching channels.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The JSON-RPC endpoint failed, refused a transaction or returned something unusable.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The local anvil could not be run.
    #[error(transparent)]
    Anvil(#[from] AnvilError),
    /// The follower's checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The receipts between two settlements do not make the batch the chain or the store says.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The channel is not known on chain.
    #[error("channel {0} does not exist on chain")]
    UnknownChannel(ChannelId),
    /// The signer is not the account the operation needs.
    #[error("account {account} is not the channel's {role}")]
    WrongAccount {
        /// This client's account.
        account: Address,
        /// payer or provider.
        role: &'static str,
    },
    /// An amount does not fit or an arithmetic rule of the protocol failed.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The honest payouts of a batch could not be made (its weights missing, among others).
    #[error(transparent)]
    Payout(#[from] PayoutError),
    /// The receipt store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Talking to a JSON-RPC endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The endpoint failed or could not be reached.
    #[error("RPC call {call} failed: {source}")]
    Call {
        /// What was being done.
        call: &'static str,
        /// The transport's error.
        #[source]
        source: alloy::transports::TransportError,
    },
    /// A contract call or transaction was rejected; `reason` is the decoded revert (the
    /// contract's custom error) when there is one.
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// The contract function.
        call: &'static str,
        /// The decoded custom error, or the raw error.
        reason: String,
    },
    /// A transaction was mined but failed (status 0).
    #[error("{call} transaction {tx} failed on chain")]
    TxFailed {
        /// The contract function.
        call: &'static str,
        /// The transaction hash.
        tx: B256,
    },
    /// A transaction's receipt lacks the event the call must emit.
    #[error("{call} succeeded but emitted no {event} event")]
    MissingEvent {
        /// The contract function.
        call: &'static str,
        /// The event looked for.
        event: &'static str,
    },
    /// The endpoint is not a URL.
    #[error("bad RPC endpoint {endpoint:?}: {reason}; give an http(s) URL such as http://127.0.0.1:8545")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A value from the chain does not fit the type the protocol gives it.
    #[error("{what} from the chain is out of range: {value}")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// Running the local anvil.
#[derive(Debug, thiserror::Error)]
pub enum AnvilError {
    /// The binary is not where it was looked for.
    #[error("anvil not found at {}: run scripts/setup-chain-tools or set ATTRINET_ANVIL", .0.display())]
    NotFound(PathBuf),
    /// The process could not be started.
    #[error("cannot run anvil at {}: {source}", .binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// It did not report a listening port in time.
    #[error("anvil did not report a listening port within {0:?}")]
    NoPort(std::time::Duration),
    /// It exited before it listened.
    #[error("anvil exited before it listened: {0}")]
    Exited(std::process::ExitStatus),
    /// It reported a port but did not accept connections on it in time.
    #[error("anvil did not listen on port {port} within {within:?}")]
    NotListening {
        /// The port it reported.
        port: u16,
        /// How long it was given.
        within: std::time::Duration,
    },
    /// It answered without a latest block.
    #[error("anvil has no latest block")]
    NoBlock,
}

/// The follower's checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("checkpoint {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a checkpoint.
    #[error("checkpoint {} is corrupt: {content:?}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
}

/// A batch (the receipts between two settlements) that does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The store has no voucher to settle for a channel whose chain state says there is
    /// something to settle.
    #[error("no stored voucher for channel {channel} at seq {seq}")]
    NoVoucher {
        /// The channel.
        channel: ChannelId,
        /// The seq looked for.
        seq: Seq,
    },
    /// The receipts are incomplete or inconsistent with what was settled; `reason` says what.
    #[error("batch of channel {channel}: {reason}")]
    Inconsistent {
        /// The channel.
        channel: ChannelId,
        /// What is wrong.
        reason: String,
    },
    /// A model named by a receipt is not registered.
    #[error("model {0} is not registered")]
    UnknownModel(ModelId),
}

/// `Result` with [`ChainError`].
pub type Result<T, E = ChainError> = std::result::Result<T, E>;
