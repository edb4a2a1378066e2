//! The durable [`Store`]: sled, with every co-signed receipt flushed to disk before
//! [`Store::record_receipt`] returns.

use std::path::Path;

use attrinet_market::{
    ChannelId, ChannelState, Seq, SignedReceipt, SignedVoucher, Store, StoreError, StoredReceipt, Wei, decode, encode,
    merge_put,
};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

const CHANNELS: &str = "channels";
const RECEIPTS: &str = "receipts";
const WEIGHTS: &str = "weights";
const WRITTEN_OFF: &str = "written_off";

/// A [`Store`] in a sled database directory.
///
/// Layout: tree `channels` maps a channel id (32 bytes) to its encoded [`ChannelState`];
/// tree `receipts` maps channel id ‖ seq (8 bytes big-endian, so keys sort by seq) to the
/// encoded [`StoredReceipt`]; tree `written_off` maps a payer's address (20 bytes) to what
/// was written off for it (16 bytes, big-endian). A receipt and its channel's new state are
/// written in one sled transaction, then the database is flushed (fsync) before the call
/// returns.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    channels: sled::Tree,
    receipts: sled::Tree,
    weights: sled::Tree,
    written_off: sled::Tree,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn receipt_key(id: &ChannelId, seq: Seq) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(id.as_bytes());
    k[32..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // No background flush thread: durability comes from the explicit flush after
            // each money-moving write, and an idle node should not wake up every 500 ms.
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Backend(format!("cannot open store at {}: {e}", dir.display())))?;
        let channels = db.open_tree(CHANNELS).map_err(backend)?;
        let receipts = db.open_tree(RECEIPTS).map_err(backend)?;
        let weights = db.open_tree(WEIGHTS).map_err(backend)?;
        let written_off = db.open_tree(WRITTEN_OFF).map_err(backend)?;
        Ok(SledStore { db, channels, receipts, weights, written_off })
    }

    /// Writes everything to disk (each money-moving write already did; this is for a
    /// clean stop).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn get_channel(tree: &sled::Tree, id: &ChannelId) -> Result<Option<ChannelState>, StoreError> {
        tree.get(id.as_bytes()).map_err(backend)?.map(|v| decode(&v).map_err(StoreError::from)).transpose()
    }

    /// Applies `f` to a channel's state in a transaction, writes the result, and flushes.
    fn update_channel(
        &self,
        id: &ChannelId,
        f: impl Fn(&ChannelState) -> Result<ChannelState, StoreError>,
    ) -> Result<ChannelState, StoreError> {
        let next = self
            .channels
            .transaction(|tx| {
                let Some(bytes) = tx.get(id.as_bytes())? else {
                    return Err(ConflictableTransactionError::Abort(StoreError::UnknownChannel(*id)));
                };
                let state: ChannelState = decode(&bytes).map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                let next = f(&state).map_err(ConflictableTransactionError::Abort)?;
                tx.insert(id.as_bytes(), encode(&next))?;
                Ok(next)
            })
            .map_err(unwrap_tx)?;
        self.flush()?;
        Ok(next)
    }
}

fn unwrap_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

impl Store for SledStore {
    fn put_channel(&self, state: &ChannelState) -> Result<(), StoreError> {
        let id = state.params.id;
        self.channels
            .transaction(|tx| {
                let old = match tx.get(id.as_bytes())? {
                    Some(b) => {
                        Some(decode::<ChannelState>(&b).map_err(|e| ConflictableTransactionError::Abort(e.into()))?)
                    }
                    None => None,
                };
                tx.insert(id.as_bytes(), encode(&merge_put(old.as_ref(), state)))?;
                Ok(())
            })
            .map_err(unwrap_tx)?;
        self.flush()
    }

    fn channel(&self, id: &ChannelId) -> Result<Option<ChannelState>, StoreError> {
        SledStore::get_channel(&self.channels, id)
    }

    fn channels(&self) -> Result<Vec<ChannelState>, StoreError> {
        self.channels.iter().values().map(|v| decode(&v.map_err(backend)?).map_err(StoreError::from)).collect()
    }

    fn record_receipt(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<ChannelState, StoreError> {
        let id = receipt.receipt.channel;
        let stored = encode(&StoredReceipt { receipt: receipt.clone(), voucher: voucher.clone() });
        let next = (&self.channels, &self.receipts)
            .transaction(|(channels, receipts)| {
                let abort = |e: StoreError| ConflictableTransactionError::Abort(e);
                let Some(bytes) = channels.get(id.as_bytes())? else {
                    return Err(abort(StoreError::UnknownChannel(id)));
                };
                let state: ChannelState = decode(&bytes).map_err(|e| abort(e.into()))?;
                let next = state.after(receipt, voucher).map_err(abort)?;
                receipts.insert(&receipt_key(&id, next.last_seq)[..], stored.as_slice())?;
                channels.insert(id.as_bytes(), encode(&next))?;
                Ok(next)
            })
            .map_err(unwrap_tx)?;
        // The caller acknowledges to the peer only after this returns: the receipt must be
        // on disk by then, not in sled's write buffer.
        self.flush()?;
        Ok(next)
    }

    fn mark_settled(&self, id: &ChannelId, seq: Seq) -> Result<ChannelState, StoreError> {
        self.update_channel(id, |s| s.settled_at(seq))
    }

    fn put_weights(&self, weights: &attrinet_market::Weights) -> Result<(), StoreError> {
        // No flush of its own: sled keeps one log for all trees and a flush writes it in
        // order, so the flush that makes a receipt durable (record_receipt) makes the
        // weights written before it durable too. Weights with no receipt after them are
        // worth nothing (nobody signed them). The crash test checks this ordering.
        self.weights.insert(weights.root().as_slice(), encode(weights)).map_err(backend)?;
        Ok(())
    }

    fn weights(&self, root: &alloy_primitives::B256) -> Result<Option<attrinet_market::Weights>, StoreError> {
        self.weights.get(root.as_slice()).map_err(backend)?.map(|v| decode(&v).map_err(StoreError::from)).transpose()
    }

    fn written_off(&self, payer: &alloy_primitives::Address) -> Result<Wei, StoreError> {
        match self.written_off.get(payer.as_slice()).map_err(backend)? {
            Some(v) => Ok(Wei(u128::from_be_bytes(
                v.as_ref().try_into().map_err(|_| backend(format!("written-off record of {payer} is not 16 bytes")))?,
            ))),
            None => Ok(Wei::ZERO),
        }
    }

    fn add_written_off(&self, payer: &alloy_primitives::Address, value: Wei) -> Result<Wei, StoreError> {
        // One key per payer, read-modify-written atomically.
        let mut total = Wei::ZERO;
        self.written_off
            .update_and_fetch(payer.as_slice(), |old| {
                let before = old.and_then(|v| <[u8; 16]>::try_from(v).ok()).map_or(0, u128::from_be_bytes);
                total = Wei(before.saturating_add(value.0));
                Some(total.0.to_be_bytes().to_vec())
            })
            .map_err(backend)?;
        self.flush()?;
        Ok(total)
    }

    fn receipt(&self, id: &ChannelId, seq: Seq) -> Result<Option<StoredReceipt>, StoreError> {
        self.receipts
            .get(receipt_key(id, seq))
            .map_err(backend)?
            .map(|v| decode(&v).map_err(StoreError::from))
            .transpose()
    }

    fn receipts_after(&self, id: &ChannelId, after: Seq) -> Result<Vec<StoredReceipt>, StoreError> {
        let Some(from) = after.0.checked_add(1) else { return Ok(Vec::new()) };
        self.receipts
            .range(receipt_key(id, Seq(from))..=receipt_key(id, Seq(u64::MAX)))
            .values()
            .map(|v| decode(&v.map_err(backend)?).map_err(StoreError::from))
            .collect()
    }
}

/// What [`audit`] found in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Channels checked.
    pub channels: usize,
    /// Receipts checked.
    pub receipts: u64,
}

/// Re-checks every stored channel from scratch: receipts contiguous from seq 1 to the
/// channel's last seq, every signature valid, every cumulative the previous plus the value,
/// and the channel's state equal to the replay. An operator runs this after a crash or a
/// disk scare; the crash test runs it after every kill.
pub fn audit(store: &dyn Store) -> Result<Audit, StoreError> {
    let mut audit = Audit { channels: 0, receipts: 0 };
    for state in store.channels()? {
        let mut replay = ChannelState::open(state.params.clone(), state.deposit);
        for stored in store.receipts_after(&state.params.id, Seq::ZERO)? {
            replay = replay.after(&stored.receipt, &stored.voucher)?;
            audit.receipts += 1;
        }
        if replay.last_seq != state.last_seq || replay.cumulative != state.cumulative {
            return Err(StoreError::Backend(format!(
                "channel {}: stored state says seq {} / {}, receipts replay to seq {} / {}",
                state.params.id, state.last_seq, state.cumulative, replay.last_seq, replay.cumulative
            )));
        }
        audit.channels += 1;
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write-offs are the payer's across restarts (issue 14, attack 9): reopened, the store
    /// still knows them, and adds to them.
    #[test]
    fn written_off_totals_survive_a_reopen_and_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (alloy_primitives::Address::repeat_byte(1), alloy_primitives::Address::repeat_byte(2));
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.written_off(&a).unwrap(), Wei::ZERO);
            assert_eq!(store.add_written_off(&a, Wei(40)).unwrap(), Wei(40));
            assert_eq!(store.add_written_off(&a, Wei(2)).unwrap(), Wei(42));
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.written_off(&a).unwrap(), Wei(42));
        assert_eq!(store.written_off(&b).unwrap(), Wei::ZERO, "per payer");
        assert_eq!(store.add_written_off(&a, Wei(u128::MAX)).unwrap(), Wei(u128::MAX));
    }
}
