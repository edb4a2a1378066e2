//! Following the Channels contract's events: N confirmations deep, from a durable
//! checkpoint, so that a restarted follower replays exactly what it had not finished.

use std::path::PathBuf;
use std::sync::Mutex;

use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;
use attrinet_market::{ChannelId, PayoutRun, Seq, Wei};

use crate::abi::{self, Channels};
use crate::error::{ChainError, CheckpointError, Result, RpcError};
use crate::types::Cursor;

/// Where a follower keeps its cursor between runs.
pub trait Checkpoint: Send + Sync {
    /// The saved cursor, `None` on first start.
    fn load(&self) -> Result<Option<Cursor>>;
    /// Saves the cursor durably.
    fn save(&self, cursor: Cursor) -> Result<()>;
}

/// A checkpoint in a small text file, replaced atomically (write, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileCheckpoint {
    path: PathBuf,
}

impl FileCheckpoint {
    /// A checkpoint kept at `path`.
    pub fn new(path: impl Into<PathBuf>) -> FileCheckpoint {
        FileCheckpoint { path: path.into() }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ChainError + '_ {
        move |source| CheckpointError::Io { path: self.path.clone(), source }.into()
    }
}

impl Checkpoint for FileCheckpoint {
    fn load(&self) -> Result<Option<Cursor>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io()(e)),
        };
        let corrupt = || CheckpointError::Corrupt { path: self.path.clone(), content: text.clone() };
        let mut parts = text.split_whitespace();
        let block = parts.next().and_then(|b| b.parse().ok()).ok_or_else(corrupt)?;
        let log_index = parts.next().and_then(|b| b.parse().ok()).ok_or_else(corrupt)?;
        Ok(Some(Cursor { block, log_index }))
    }

    fn save(&self, cursor: Cursor) -> Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(self.io())?;
        writeln!(f, "{} {}", cursor.block, cursor.log_index).map_err(self.io())?;
        // Durable before visible: a crash leaves the old checkpoint or the new one.
        f.sync_all().map_err(self.io())?;
        std::fs::rename(&tmp, &self.path).map_err(self.io())?;
        Ok(())
    }
}

/// A checkpoint in memory (tests; a watcher that may start over).
#[derive(Debug, Default)]
pub struct MemCheckpoint(Mutex<Option<Cursor>>);

impl Checkpoint for MemCheckpoint {
    fn load(&self) -> Result<Option<Cursor>> {
        Ok(*self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn save(&self, cursor: Cursor) -> Result<()> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(cursor);
        Ok(())
    }
}

/// A decoded event of the Channels contract.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ChannelEvent {
    /// A channel was opened.
    Opened {
        /// The channel.
        channel: ChannelId,
        /// Its payer.
        payer: Address,
        /// Its provider.
        provider: Address,
        /// The deposit.
        deposit: Wei,
    },
    /// A provider settled a voucher; it is pending until `deadline`.
    Settled {
        /// The channel.
        channel: ChannelId,
        /// The provider.
        provider: Address,
        /// The voucher's seq.
        seq: Seq,
        /// The voucher's cumulative.
        cumulative: Wei,
        /// The amount claimed.
        amount: Wei,
        /// The voucher's receipts root.
        receipts_root: B256,
        /// The channel's settled seq before this settlement.
        batch_start: Seq,
        /// End of the challenge window.
        deadline: u64,
        /// Declared payouts.
        payouts: Vec<PayoutRun>,
    },
    /// A settlement became final.
    Finalized {
        /// The channel.
        channel: ChannelId,
        /// Its settled seq now.
        seq: Seq,
    },
    /// A settlement was disputed and voided.
    Disputed {
        /// The channel.
        channel: ChannelId,
        /// Who proved it.
        disputer: Address,
        /// What was slashed.
        slashed: Wei,
    },
    /// The payer started its thaw.
    Thawing {
        /// The channel.
        channel: ChannelId,
        /// Its payer.
        payer: Address,
        /// Its provider.
        provider: Address,
        /// When the payer may withdraw.
        thaw_end: u64,
    },
    /// An event of the contract this follower does not act on.
    Other,
}

impl ChannelEvent {
    fn decode(log: &Log) -> Result<ChannelEvent> {
        let topic = log.topic0().copied().unwrap_or_default();
        let decode_err = |e: alloy::sol_types::Error| RpcError::OutOfRange { what: "event log", value: e.to_string() };
        Ok(match topic {
            t if t == Channels::Opened::SIGNATURE_HASH => {
                let e = log.log_decode::<Channels::Opened>().map_err(decode_err)?.inner.data;
                let deposit = u128::try_from(e.deposit)
                    .map_err(|_| RpcError::OutOfRange { what: "deposit", value: e.deposit.to_string() })?;
                ChannelEvent::Opened {
                    channel: ChannelId(e.channel),
                    payer: e.payer,
                    provider: e.provider,
                    deposit: Wei(deposit),
                }
            }
            t if t == Channels::Settled::SIGNATURE_HASH => {
                let e = log.log_decode::<Channels::Settled>().map_err(decode_err)?.inner.data;
                ChannelEvent::Settled {
                    channel: ChannelId(e.channel),
                    provider: e.provider,
                    seq: Seq(e.seq),
                    cumulative: Wei(e.cumulative),
                    amount: Wei(e.amount),
                    receipts_root: e.receiptsRoot,
                    batch_start: Seq(e.batchStart),
                    deadline: e.deadline,
                    payouts: e.payouts.iter().map(abi::payout_of).collect(),
                }
            }
            t if t == Channels::Finalized::SIGNATURE_HASH => {
                let e = log.log_decode::<Channels::Finalized>().map_err(decode_err)?.inner.data;
                ChannelEvent::Finalized { channel: ChannelId(e.channel), seq: Seq(e.seq) }
            }
            t if t == Channels::Disputed::SIGNATURE_HASH => {
                let e = log.log_decode::<Channels::Disputed>().map_err(decode_err)?.inner.data;
                let slashed = u128::try_from(e.slashed)
                    .map_err(|_| RpcError::OutOfRange { what: "slashed", value: e.slashed.to_string() })?;
                ChannelEvent::Disputed { channel: ChannelId(e.channel), disputer: e.disputer, slashed: Wei(slashed) }
            }
            t if t == Channels::Thawing::SIGNATURE_HASH => {
                let e = log.log_decode::<Channels::Thawing>().map_err(decode_err)?.inner.data;
                ChannelEvent::Thawing {
                    channel: ChannelId(e.channel),
                    payer: e.payer,
                    provider: e.provider,
                    thaw_end: e.thawEnd,
                }
            }
            _ => ChannelEvent::Other,
        })
    }
}

/// An event and where it is in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FollowedEvent {
    /// Its position (commit [`Cursor::before`] of it to have it replayed after a restart).
    pub cursor: Cursor,
    /// The transaction that emitted it.
    pub tx: B256,
    /// The event.
    pub event: ChannelEvent,
}

/// Reads the Channels contract's logs in order, only from blocks at least
/// `confirmations` deep, resuming after the last committed cursor.
///
/// Reorganisations deeper than `confirmations` are not handled: on an OP Stack L2 the
/// sequencer's blocks do not reorganise short of an L1 reorg of the batch, and the
/// confirmation depth is chosen to cover what does happen.
#[derive(Debug)]
pub struct EventFollower<C> {
    provider: DynProvider,
    address: Address,
    confirmations: u64,
    /// Largest block span asked of one eth_getLogs (nodes cap it).
    max_span: u64,
    position: Cursor,
    checkpoint: C,
}

impl<C: Checkpoint> EventFollower<C> {
    /// A follower of the contract at `address`, starting at `start_block` unless the
    /// checkpoint holds a later position.
    pub fn new(
        provider: DynProvider,
        address: Address,
        confirmations: u64,
        start_block: u64,
        checkpoint: C,
    ) -> Result<Self> {
        let start = Cursor::end_of(start_block.saturating_sub(1));
        let position = checkpoint.load()?.map_or(start, |c| c.max(start));
        Ok(EventFollower { provider, address, confirmations, max_span: 2_000, position, checkpoint })
    }

    /// How far events have been read (not necessarily committed).
    pub fn position(&self) -> Cursor {
        self.position
    }

    /// The events after the current position in blocks with enough confirmations, in
    /// chain order. Reading moves the position; only [`EventFollower::commit`] makes a
    /// position survive a restart.
    pub async fn poll(&mut self) -> Result<Vec<FollowedEvent>> {
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(|source| RpcError::Call { call: "eth_blockNumber", source })?;
        let Some(safe) = head.checked_sub(self.confirmations) else { return Ok(Vec::new()) };
        let from = if self.position.log_index == u64::MAX { self.position.block + 1 } else { self.position.block };
        if from > safe {
            return Ok(Vec::new());
        }
        let to = safe.min(from + self.max_span - 1);
        let filter = Filter::new().address(self.address).from_block(from).to_block(to);
        let logs =
            self.provider.get_logs(&filter).await.map_err(|source| RpcError::Call { call: "eth_getLogs", source })?;
        let mut out = Vec::new();
        for log in &logs {
            let (Some(block), Some(log_index)) = (log.block_number, log.log_index) else { continue };
            let cursor = Cursor { block, log_index };
            if cursor <= self.position || log.removed {
                continue;
            }
            let event = ChannelEvent::decode(log)?;
            out.push(FollowedEvent { cursor, tx: log.transaction_hash.unwrap_or_default(), event });
        }
        self.position = Cursor::end_of(to);
        Ok(out)
    }

    /// Polls until caught up with the chain's confirmed head: every event after the current
    /// position, however many spans that takes (or those read before a failure).
    pub async fn poll_all(&mut self) -> Result<Vec<FollowedEvent>> {
        let mut out = Vec::new();
        loop {
            let before = self.position;
            let events = match self.poll().await {
                Ok(events) => events,
                // What was read so far is handed over (the position moved past it); the
                // failure comes back on the next call.
                Err(_) if !out.is_empty() => return Ok(out),
                Err(e) => return Err(e),
            };
            // Caught up once a poll neither finds events nor moves on.
            if events.is_empty() && self.position == before {
                return Ok(out);
            }
            out.extend(events);
        }
    }

    /// Durably records that everything at or before `cursor` is handled.
    pub fn commit(&self, cursor: Cursor) -> Result<()> {
        self.checkpoint.save(cursor)
    }
}
