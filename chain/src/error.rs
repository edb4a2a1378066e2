//! The crate's error type.

use alloy::primitives::{Address, B256};
use attrinet_market::{ChannelId, MarketError, Seq, StoreError};

/// Everything that can go wrong talking to the chain, running anvil, or settling and
/// watching channels.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The JSON-RPC endpoint failed or could not be reached.
    #[error("RPC call {call} failed: {source}")]
    Rpc {
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
    /// The anvil binary is not where it was looked for.
    #[error("anvil not found at {path}: run scripts/setup-chain-tools or set ATTRINET_ANVIL")]
    AnvilNotFound {
        /// Where it was looked for.
        path: String,
    },
    /// The RPC endpoint is not a URL.
    #[error("bad RPC endpoint {endpoint:?}: {reason}; give an http(s) URL such as http://127.0.0.1:8545")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it does not parse.
        reason: String,
    },
    /// anvil could not be started or did not start listening in time.
    #[error("anvil did not start: {0}")]
    AnvilStart(String),
    /// The channel is not known on chain.
    #[error("channel {0} does not exist on chain")]
    UnknownChannel(ChannelId),
    /// The store has no voucher to settle for a channel whose chain state says there is
    /// something to settle.
    #[error("no stored voucher for channel {channel} at seq {seq}")]
    NoVoucher {
        /// The channel.
        channel: ChannelId,
        /// The seq looked for.
        seq: Seq,
    },
    /// A batch (the receipts between two settlements) is incomplete or inconsistent with
    /// what was settled; the message says what.
    #[error("batch of channel {channel}: {reason}")]
    BadBatch {
        /// The channel.
        channel: ChannelId,
        /// What is wrong.
        reason: String,
    },
    /// A receipt's weights are missing or are not the ones its `attributionRoot` commits to.
    #[error("the weights of receipt {seq} are missing or do not match its attributionRoot")]
    WeightsMismatch {
        /// The receipt's seq.
        seq: Seq,
    },
    /// A datanet could not be read, built or saved; the message says which file and why.
    #[error("datanet {path}: {reason}")]
    Datanet {
        /// The file or directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A model named by a receipt is not registered.
    #[error("model {0} is not registered")]
    UnknownModel(B256),
    /// An amount does not fit or an arithmetic rule of the protocol failed.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The honest payouts of a batch could not be made.
    #[error(transparent)]
    Payout(#[from] attrinet_market::PayoutError),
    /// The receipt store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The follower's checkpoint file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint file's content is not a checkpoint.
    #[error("checkpoint {path} is corrupt: {content:?}")]
    CorruptCheckpoint {
        /// The file.
        path: String,
        /// What it holds.
        content: String,
    },
    /// A value from the chain does not fit the type the protocol gives it.
    #[error("{what} from the chain is out of range: {value}")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The signer is not the account the operation needs.
    #[error("account {account} is not the channel's {role}")]
    WrongAccount {
        /// This client's account.
        account: Address,
        /// payer or provider.
        role: &'static str,
    },
}

/// `Result` with [`ChainError`].
pub type Result<T, E = ChainError> = std::result::Result<T, E>;
