//! What a node or client must never lose: channels and co-signed receipts. The [`Store`]
//! trait lives here with an in-memory implementation; the durable one (sled) is in the node.

use std::collections::BTreeMap;
use std::sync::Mutex;

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::error::{MarketError, VerifyError};
use crate::receipt::{PublicKey, SignedReceipt};
use crate::types::{ChannelId, Domain, Seq, Wei};
use crate::voucher::SignedVoucher;

/// What is fixed when a channel opens.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChannelParams {
    /// Chain and settlement contract.
    pub domain: Domain,
    /// The channel.
    pub id: ChannelId,
    /// The client's EVM address.
    pub payer: Address,
    /// The node's EVM address.
    pub provider: Address,
    /// The client's ed25519 key.
    pub payer_key: PublicKey,
    /// The node's ed25519 key.
    pub provider_key: PublicKey,
}

/// A channel's state as both sides store it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChannelState {
    /// Fixed parameters.
    pub params: ChannelParams,
    /// The payer's deposit on chain, as last seen.
    pub deposit: Wei,
    /// Seq of the latest co-signed receipt (0 before any).
    pub last_seq: Seq,
    /// Cumulative value of the latest co-signed receipt.
    pub cumulative: Wei,
    /// Seq covered by the latest settlement (0 before any).
    pub settled_seq: Seq,
}

/// A co-signed receipt with the voucher signed for it, as stored.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoredReceipt {
    /// The co-signed receipt.
    pub receipt: SignedReceipt,
    /// The payer's voucher for the channel as of this receipt.
    pub voucher: SignedVoucher,
}

/// Why a store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No channel with that id is stored.
    #[error("unknown channel {0}")]
    UnknownChannel(crate::ChannelId),
    /// The receipt or voucher names other parties, keys, chain or contract than the
    /// channel.
    #[error("receipt does not belong to channel {channel}: its {field} differs")]
    ForeignReceipt {
        /// The channel.
        channel: crate::ChannelId,
        /// The first field that differs.
        field: &'static str,
    },
    /// The receipt's seq is not the channel's last + 1.
    #[error("receipt seq {got} does not follow the channel's last seq {last}")]
    SeqGap {
        /// The channel's last seq.
        last: Seq,
        /// The receipt's seq.
        got: Seq,
    },
    /// The receipt's cumulative is not the previous cumulative plus its value.
    #[error("receipt cumulative {got} is not previous {previous} plus value {value}")]
    Cumulative {
        /// Previous cumulative.
        previous: Wei,
        /// The receipt's value.
        value: Wei,
        /// The receipt's cumulative.
        got: Wei,
    },
    /// The voucher's channel, seq or cumulative differ from the receipt's.
    #[error("voucher does not match the receipt: {0} differs")]
    VoucherMismatch(&'static str),
    /// A signature does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// Arithmetic or decoding failed.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// A settlement mark would move backwards or past the last receipt.
    #[error("cannot mark seq {seq} settled: settled {settled}, last {last}")]
    BadSettlement {
        /// Requested mark.
        seq: Seq,
        /// Current mark.
        settled: Seq,
        /// Last receipt.
        last: Seq,
    },
    /// The storage backend failed (disk, corruption); the message says how.
    #[error("storage backend: {0}")]
    Backend(String),
}

impl ChannelState {
    /// A fresh channel with nothing spent.
    pub fn open(params: ChannelParams, deposit: Wei) -> ChannelState {
        ChannelState { params, deposit, last_seq: Seq::ZERO, cumulative: Wei::ZERO, settled_seq: Seq::ZERO }
    }

    /// Checks that `receipt` with `voucher` is the channel's next co-signed receipt, and
    /// returns the state after it. Every store calls this inside its atomic update, so a
    /// gap, a replay or a cumulative that does not add up can never be recorded.
    pub fn after(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<ChannelState, StoreError> {
        let p = &self.params;
        let r = &receipt.receipt;
        let foreign = |field| StoreError::ForeignReceipt { channel: p.id, field };
        if r.channel != p.id {
            return Err(foreign("channel"));
        }
        if r.domain != p.domain {
            return Err(foreign("domain"));
        }
        if r.payer != p.payer || r.payer_key != p.payer_key {
            return Err(foreign("payer"));
        }
        if r.provider != p.provider || r.provider_key != p.provider_key {
            return Err(foreign("provider"));
        }
        if r.seq != self.last_seq.next()? {
            return Err(StoreError::SeqGap { last: self.last_seq, got: r.seq });
        }
        let expected = self.cumulative.checked_add(r.value)?;
        if r.cumulative != expected {
            return Err(StoreError::Cumulative { previous: self.cumulative, value: r.value, got: r.cumulative });
        }
        let v = &voucher.voucher;
        if v.domain != p.domain || v.channel != p.id {
            return Err(StoreError::VoucherMismatch("channel"));
        }
        if v.seq != r.seq {
            return Err(StoreError::VoucherMismatch("seq"));
        }
        if v.cumulative != r.cumulative {
            return Err(StoreError::VoucherMismatch("cumulative"));
        }
        receipt.verify()?;
        voucher.verify(p.payer)?;
        Ok(ChannelState { last_seq: r.seq, cumulative: r.cumulative, ..self.clone() })
    }

    /// Whether any deposit is left to spend: a channel used up, or cut to what it owes
    /// because its payer is leaving, is passed over when choosing where to pay.
    pub fn has_deposit_left(&self) -> bool {
        self.deposit > self.cumulative
    }

    /// The thaw rule, as the chain states a channel (its thaw end, zero when not thawing,
    /// and whether the payer withdrew): a payer that has started to leave gets no new
    /// service, since it could withdraw before paying for it; and its provider settles what
    /// it is owed at once, whatever its policy, since whatever is unsettled when the thaw
    /// ends goes back to the payer.
    pub fn payer_leaving(thaw_end: u64, closed: bool) -> bool {
        closed || thaw_end > 0
    }

    /// The state a provider serves a channel from, learnt from the chain: open with
    /// `deposit`, or `None` when its payer is leaving ([`ChannelState::payer_leaving`]).
    pub fn servable(params: ChannelParams, deposit: Wei, thaw_end: u64, closed: bool) -> Option<ChannelState> {
        (!ChannelState::payer_leaving(thaw_end, closed)).then(|| ChannelState::open(params, deposit))
    }

    /// The state once the payer started its thaw: the deposit cut to what is already owed,
    /// so that every new request is refused for want of deposit. `None` when there was
    /// nothing left to cut.
    pub fn thawed(&self) -> Option<ChannelState> {
        self.has_deposit_left().then(|| ChannelState { deposit: self.cumulative, ..self.clone() })
    }

    /// The state after a settlement covering receipts up to `seq`.
    pub fn settled_at(&self, seq: Seq) -> Result<ChannelState, StoreError> {
        if seq < self.settled_seq || seq > self.last_seq {
            return Err(StoreError::BadSettlement { seq, settled: self.settled_seq, last: self.last_seq });
        }
        Ok(ChannelState { settled_seq: seq, ..self.clone() })
    }
}

/// Durable state of channels and their co-signed receipts.
///
/// Contract for implementations: each method is atomic; when [`Store::record_receipt`]
/// returns `Ok`, the receipt, its voucher and the channel's new state survive a crash of
/// the process or the machine; when it returns `Err`, nothing changed.
pub trait Store: Send + Sync {
    /// Creates a channel, or replaces its parameters and deposit. Never moves `last_seq`,
    /// `cumulative` or `settled_seq` of an existing channel (those change only through
    /// [`Store::record_receipt`] and [`Store::mark_settled`]).
    fn put_channel(&self, state: &ChannelState) -> Result<(), StoreError>;

    /// A channel's state.
    fn channel(&self, id: &ChannelId) -> Result<Option<ChannelState>, StoreError>;

    /// All channels, in id order.
    fn channels(&self) -> Result<Vec<ChannelState>, StoreError>;

    /// Records the channel's next co-signed receipt and its voucher, checked by
    /// [`ChannelState::after`]; returns the new state once it is durable.
    fn record_receipt(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<ChannelState, StoreError>;

    /// Marks receipts up to `seq` as settled.
    fn mark_settled(&self, id: &ChannelId, seq: Seq) -> Result<ChannelState, StoreError>;

    /// The stored receipt with that seq.
    fn receipt(&self, id: &ChannelId, seq: Seq) -> Result<Option<StoredReceipt>, StoreError>;

    /// Receipts with seq greater than `after`, in seq order.
    fn receipts_after(&self, id: &ChannelId, after: Seq) -> Result<Vec<StoredReceipt>, StoreError>;

    /// Keeps attribution weights under their root. Settling a receipt that commits to
    /// them needs them, after a restart too: they must be durable no later than the next
    /// [`Store::record_receipt`] that returns `Ok`. Idempotent.
    fn put_weights(&self, weights: &crate::Weights) -> Result<(), StoreError>;

    /// The weights whose root is `root`.
    fn weights(&self, root: &alloy_primitives::B256) -> Result<Option<crate::Weights>, StoreError>;

    /// What a provider wrote off as served but unpaid for `payer`, over all its channels
    /// and restarts: the exposure limit is the payer's (docs/protocol.md, "Ledger rules").
    fn written_off(&self, payer: &Address) -> Result<Wei, StoreError>;

    /// Adds `value` to what is written off for `payer` (saturating); durable when it returns.
    /// Returns the new total.
    fn add_written_off(&self, payer: &Address, value: Wei) -> Result<Wei, StoreError>;
}

/// A [`Store`] in memory, for tests and short-lived clients.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    channels: BTreeMap<ChannelId, ChannelState>,
    receipts: BTreeMap<(ChannelId, Seq), StoredReceipt>,
    weights: BTreeMap<alloy_primitives::B256, crate::Weights>,
    written_off: BTreeMap<Address, Wei>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding the lock cannot leave a half-applied update: every update
        // is computed first and applied with plain inserts.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn put_channel(&self, state: &ChannelState) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let merged = merge_put(inner.channels.get(&state.params.id), state);
        inner.channels.insert(state.params.id, merged);
        Ok(())
    }

    fn channel(&self, id: &ChannelId) -> Result<Option<ChannelState>, StoreError> {
        Ok(self.lock().channels.get(id).cloned())
    }

    fn channels(&self) -> Result<Vec<ChannelState>, StoreError> {
        Ok(self.lock().channels.values().cloned().collect())
    }

    fn record_receipt(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<ChannelState, StoreError> {
        let mut inner = self.lock();
        let id = receipt.receipt.channel;
        let state = inner.channels.get(&id).ok_or(StoreError::UnknownChannel(id))?;
        let next = state.after(receipt, voucher)?;
        inner
            .receipts
            .insert((id, next.last_seq), StoredReceipt { receipt: receipt.clone(), voucher: voucher.clone() });
        inner.channels.insert(id, next.clone());
        Ok(next)
    }

    fn mark_settled(&self, id: &ChannelId, seq: Seq) -> Result<ChannelState, StoreError> {
        let mut inner = self.lock();
        let state = inner.channels.get(id).ok_or(StoreError::UnknownChannel(*id))?;
        let next = state.settled_at(seq)?;
        inner.channels.insert(*id, next.clone());
        Ok(next)
    }

    fn receipt(&self, id: &ChannelId, seq: Seq) -> Result<Option<StoredReceipt>, StoreError> {
        Ok(self.lock().receipts.get(&(*id, seq)).cloned())
    }

    fn put_weights(&self, weights: &crate::Weights) -> Result<(), StoreError> {
        self.lock().weights.insert(weights.root(), weights.clone());
        Ok(())
    }

    fn weights(&self, root: &alloy_primitives::B256) -> Result<Option<crate::Weights>, StoreError> {
        Ok(self.lock().weights.get(root).cloned())
    }

    fn written_off(&self, payer: &Address) -> Result<Wei, StoreError> {
        Ok(self.lock().written_off.get(payer).copied().unwrap_or(Wei::ZERO))
    }

    fn add_written_off(&self, payer: &Address, value: Wei) -> Result<Wei, StoreError> {
        let mut inner = self.lock();
        let total = inner.written_off.entry(*payer).or_insert(Wei::ZERO);
        *total = Wei(total.0.saturating_add(value.0));
        Ok(*total)
    }

    fn receipts_after(&self, id: &ChannelId, after: Seq) -> Result<Vec<StoredReceipt>, StoreError> {
        let inner = self.lock();
        let Some(from) = after.0.checked_add(1) else { return Ok(Vec::new()) };
        Ok(inner.receipts.range((*id, Seq(from))..=(*id, Seq(u64::MAX))).map(|(_, r)| r.clone()).collect())
    }
}

/// The state `put_channel` stores: the new parameters and deposit, the old progress.
pub fn merge_put(existing: Option<&ChannelState>, new: &ChannelState) -> ChannelState {
    match existing {
        Some(old) => ChannelState {
            params: new.params.clone(),
            deposit: new.deposit,
            last_seq: old.last_seq,
            cumulative: old.cumulative,
            settled_seq: old.settled_seq,
        },
        None => new.clone(),
    }
}
