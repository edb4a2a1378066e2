//! The settlement loop a node runs: settle each channel's latest settleable voucher when
//! enough value or enough time has accumulated and the gas is worth it; finalize when the
//! window has passed; never two settlements of a channel at once.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{B256, U256};
use attrinet_market::{
    ChannelId, ChannelState, PayoutError, Seq, SignedVoucher, Store, StoredReceipt, SumTree, Wei, honest_terms,
    payout_runs,
};

use crate::attribution::{AttributionSource, weights_of};
use crate::client::ChainClient;
use crate::error::{BatchError, ChainError, Result};
use crate::types::TxOutcome;

/// When the loop settles.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SettlementPolicy {
    /// Settle once the unsettled value of a channel reaches this.
    pub threshold: Wei,
    /// ... or once its oldest unsettled receipt is this many seconds old.
    pub max_age_secs: u64,
    /// Never settle when the gas would cost more than this fraction of the value, in
    /// basis points (100 = 1%). A thaw overrides it: settling late loses everything.
    pub max_gas_bps: u16,
}

/// What the loop did for one channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SettleAction {
    /// Settled the voucher at `seq`, claiming `amount`.
    Settled {
        /// The voucher's seq.
        seq: Seq,
        /// The amount claimed.
        amount: Wei,
        /// The transaction.
        outcome: TxOutcome,
    },
    /// Finalized the pending settlement at `seq`, and marked the store settled up to it.
    /// A node holding channel ledgers in memory refreshes them from the store
    /// (`ProviderChannel::settled`), so that its next vouchers' batches start at `seq`.
    Finalized {
        /// Its seq.
        seq: Seq,
    },
    /// A settlement is in its window until `deadline`; nothing to do before.
    Pending {
        /// End of the window.
        deadline: u64,
    },
    /// Everything stored is settled.
    NothingToSettle,
    /// Not enough value and not old enough yet.
    BelowThreshold {
        /// Unsettled value.
        unsettled: Wei,
    },
    /// The gas would cost more than the policy allows.
    NotWorthIt {
        /// Value of the settleable voucher.
        value: Wei,
        /// Estimated gas cost.
        gas_cost: Wei,
    },
    /// The payer withdrew; nothing can be settled any more.
    Closed,
    /// Receipts arrived while the settlement was being decided: the next pass settles
    /// them too, with the batch they belong to.
    Superseded,
    /// The settlement of the voucher at `seq`, with the payouts this loop would send, was
    /// voided by a dispute; it is not sent again (it would be disputed again). A person
    /// must look at it.
    Voided {
        /// The voucher's seq.
        seq: Seq,
    },
}

/// Settles the channels of one provider from its store.
#[derive(Debug)]
pub struct SettlementLoop<S> {
    client: ChainClient,
    store: Arc<S>,
    policy: SettlementPolicy,
    attribution: Option<Arc<dyn AttributionSource>>,
}

impl<S: Store> SettlementLoop<S> {
    /// A loop settling as `client`'s account (the provider) from `store`.
    pub fn new(client: ChainClient, store: Arc<S>, policy: SettlementPolicy) -> SettlementLoop<S> {
        SettlementLoop { client, store, policy, attribution: None }
    }

    /// Where the loop finds the weights its receipts committed to. Without it, a batch
    /// holding a receipt with weights is not settled (its contributors' entries cannot be
    /// made, and settling without them would be a provable fraud).
    pub fn with_attribution(mut self, source: Arc<dyn AttributionSource>) -> SettlementLoop<S> {
        self.attribution = Some(source);
        self
    }

    /// The provider's account.
    pub fn account(&self) -> alloy::primitives::Address {
        self.client.account()
    }

    /// One pass over every channel of this provider. A failure on one channel does not
    /// stop the others; it is retried on the next pass.
    pub async fn tick(&self) -> Result<Vec<(ChannelId, Result<SettleAction>)>> {
        let mut out = Vec::new();
        for state in self.store.channels()? {
            if state.params.provider != self.client.account() {
                continue;
            }
            let id = state.params.id;
            let action = self.settle_channel(id, false).await;
            match &action {
                Ok(a) => tracing::debug!(target: "chain::settlement", channel = %id, ?a, "settlement pass"),
                Err(e) => {
                    tracing::warn!(target: "chain::settlement", channel = %id, %e, "settlement failed; retrying next pass")
                }
            }
            out.push((id, action));
        }
        Ok(out)
    }

    /// Runs [`SettlementLoop::tick`] every `interval` until `shutdown` turns true.
    pub async fn run(&self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(target: "chain::settlement", %e, "settlement pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Brings one channel forward: finalize a due settlement, or settle the latest
    /// settleable voucher when the policy says so (`force`: regardless of threshold, age
    /// and gas, as when the payer thaws). While the payer thaws, a pass that finalizes also
    /// settles what is left (and then says `Settled`).
    pub async fn settle_channel(&self, id: ChannelId, force: bool) -> Result<SettleAction> {
        let info = self.client.channel(id).await?;
        if info.provider != self.client.account() {
            return Err(ChainError::WrongAccount { account: self.client.account(), role: "provider" });
        }
        let (_, now) = self.client.head().await?;
        if let Some(p) = self.client.pending(id).await? {
            if now < p.deadline {
                // One settlement at a time: the contract refuses a second, and the next
                // voucher's batch starts where this one ends.
                return Ok(SettleAction::Pending { deadline: p.deadline });
            }
            let payouts = self.client.settled_payouts(id, p.seq).await?.ok_or_else(|| BatchError::Inconsistent {
                channel: id,
                reason: format!("no Settled event for seq {}", p.seq),
            })?;
            self.client.finalize(id, &payouts).await?;
            self.mark_settled(id, p.seq)?;
            tracing::info!(target: "chain::settlement", channel = %id, seq = %p.seq, "finalized");
            // A thawing payer can finalize and withdraw in one transaction once the window is
            // over: settle the newest voucher in this same pass, not the next.
            if force || ChannelState::payer_leaving(info.thaw_end, info.closed) {
                match Box::pin(self.settle_channel(id, true)).await {
                    Ok(again @ SettleAction::Settled { .. }) => return Ok(again),
                    Ok(_) => {}
                    // Past the thaw the provider's one settlement may be spent (`ThawEnded`):
                    // the finalization stands either way.
                    Err(e) => {
                        tracing::warn!(target: "chain::settlement", channel = %id, %e, "no settlement after finalizing")
                    }
                }
            }
            return Ok(SettleAction::Finalized { seq: p.seq });
        }
        self.mark_settled(id, info.settled_seq)?;
        if info.closed {
            return Ok(SettleAction::Closed);
        }
        // A thawing payer takes back whatever is not settled when the thaw ends: settle
        // now, whatever the policy says.
        let force = force || ChannelState::payer_leaving(info.thaw_end, info.closed);
        let state = self.store.channel(&id)?.ok_or(attrinet_market::StoreError::UnknownChannel(id))?;
        let Ok(unsettled) = state.cumulative.checked_sub(info.settled) else {
            return Ok(SettleAction::NothingToSettle);
        };
        if unsettled == Wei::ZERO {
            return Ok(SettleAction::NothingToSettle);
        }
        let receipts = self.store.receipts_after(&id, info.settled_seq)?;
        let newest = receipts.last().map(|r| r.receipt.receipt.seq);
        let Some(first) = receipts.first() else { return Ok(SettleAction::NothingToSettle) };
        let age = now.saturating_sub(first.receipt.receipt.timestamp);
        if !force && unsettled < self.policy.threshold && age < self.policy.max_age_secs {
            return Ok(SettleAction::BelowThreshold { unsettled });
        }

        let (batch, voucher) = settleable(id, &receipts)?;

        let receipts: Vec<_> = batch.iter().map(|r| r.receipt.receipt.clone()).collect();
        let terms = self.client.terms_of(receipts.iter().map(|r| r.model)).await?;
        let weights = match (&self.attribution, receipts.iter().find(|r| !r.attribution_root.is_zero())) {
            (_, None) => None,
            (Some(source), Some(_)) => Some(weights_of(&receipts, source.as_ref())?),
            (None, Some(r)) => return Err(PayoutError::WeightsMismatch { seq: r.seq }.into()),
        };
        // Each run under the terms version its receipts were made under, as the chain's
        // history says: disputes judge it by that version alone.
        let (payouts, _) = payout_runs(&receipts, weights.as_deref(), |r| honest_terms(&terms, r))?;
        let value = voucher.voucher.cumulative.checked_sub(info.settled)?;
        // The chain already saw this voucher with these very payouts, yet holds it neither
        // pending nor settled: a dispute voided it, and the same evidence would be disputed
        // again. (Read from the chain, so a restart does not forget it; other payouts for
        // the same voucher, say after a wrong split, may still be sent.)
        let seq = voucher.voucher.seq;
        if self.client.settled_payouts(id, seq).await?.as_deref() == Some(payouts.as_slice()) {
            tracing::error!(target: "chain::settlement", channel = %id, %seq, "settlement was voided by a dispute; not resending it");
            return Ok(SettleAction::Voided { seq });
        }

        if !force {
            let gas = self.client.estimate_settle(voucher, &payouts).await?;
            let price = self.client.gas_price().await?;
            let cost = U256::from(gas) * U256::from(price.0);
            // cost ≤ value × bps / 10000, compared without division.
            if cost * U256::from(10_000u64) > U256::from(value.0) * U256::from(self.policy.max_gas_bps) {
                let gas_cost = Wei(u128::try_from(cost).unwrap_or(u128::MAX));
                return Ok(SettleAction::NotWorthIt { value, gas_cost });
            }
        }
        // From now on the node proposes receipts whose vouchers commit to the batch after
        // this one: a voucher committing to a batch that starts before the chain's settled
        // seq can never be settled. Recorded only once the settlement is decided (a batch
        // marked but never sent would hold up every later one). A receipt recorded during
        // the calls above committed to the old start; the next pass settles it with the
        // batch it belongs to instead. Only a proposal in flight at this very instant can
        // still commit to the old start (it is settled with the next receipt's voucher).
        // Should this settlement fail or be voided, a later pass settles from the chain's
        // settled seq again, with this same voucher.
        if self.store.channel(&id)?.map(|s| s.last_seq) != newest {
            return Ok(SettleAction::Superseded);
        }
        self.mark_settled(id, voucher.voucher.seq)?;
        let outcome = self.client.settle(voucher, &payouts).await?;
        tracing::info!(target: "chain::settlement", channel = %id, seq = %voucher.voucher.seq, %value, gas = outcome.gas_used, "settled");
        Ok(SettleAction::Settled { seq: voucher.voucher.seq, amount: value, outcome })
    }

    fn mark_settled(&self, id: ChannelId, seq: Seq) -> Result<()> {
        if let Some(state) = self.store.channel(&id)?
            && seq > state.settled_seq
            && seq <= state.last_seq
        {
            self.store.mark_settled(&id, seq)?;
        }
        Ok(())
    }
}

/// The longest prefix of `receipts` (those after the chain's settled seq) whose voucher
/// commits to exactly that prefix. Vouchers that commit to a batch starting elsewhere
/// (signed before a settlement was submitted, when the store had not recorded it) would
/// be a provable fraud, so they are skipped.
fn settleable(id: ChannelId, receipts: &[StoredReceipt]) -> Result<(&[StoredReceipt], &SignedVoucher)> {
    let prefixes = (1..=receipts.len()).rev().map(|end| 0..end);
    match batch_with_root(receipts, prefixes, |w| receipts[w.end - 1].voucher.voucher.receipts_root)? {
        Some(w) => Ok((&receipts[w.clone()], &receipts[w.end - 1].voucher)),
        None => Err(BatchError::NoVoucher {
            channel: id,
            seq: receipts.last().map_or(Seq::ZERO, |r| r.receipt.receipt.seq),
        }
        .into()),
    }
}

/// The first of `windows` (ranges of `receipts`) whose Merkle-sum root is `root(window)`:
/// how a provider finds what its vouchers commit to, and a watcher what a settlement does.
pub(crate) fn batch_with_root(
    receipts: &[StoredReceipt],
    windows: impl IntoIterator<Item = Range<usize>>,
    root: impl Fn(&Range<usize>) -> B256,
) -> Result<Option<Range<usize>>> {
    let leaves: Vec<_> = receipts.iter().map(|r| (r.receipt.receipt.digest(), r.receipt.receipt.value)).collect();
    for w in windows {
        if SumTree::new(&leaves[w.clone()])?.root().hash == root(&w) {
            return Ok(Some(w));
        }
    }
    Ok(None)
}
