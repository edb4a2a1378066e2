//! The settlement watcher (`attrinet watch`): follows `Settled` and `Thawing` events,
//! fetches the batch behind each settlement, checks every receipt and disputes a
//! fraudulent settlement before its window ends; for its own provider, makes sure the
//! latest voucher is settled when a payer thaws.
//!
//! Restarts: the watcher commits its follower's checkpoint only up to the oldest
//! settlement (or thaw) it has not resolved, so a watcher restarted in the middle of a
//! challenge window replays that settlement and still disputes it. Replays are harmless:
//! a settlement is acted on only while the chain still holds it as pending.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use attrinet_market::{ChannelId, Datanet, MemStore, ModelId, Seq, Store, StoredReceipt, response_hash};

use crate::attribution::{AttributionSource, weights_of};
use crate::client::ChainClient;
use crate::error::Result;
use crate::examine::{Registered, examine, outsider};
use crate::follower::{ChannelEvent, Checkpoint, EventFollower};
use crate::settlement::{SettleAction, SettlementLoop, batch_with_root};
use crate::types::{Batch, Cursor, FraudProof, Settlement, TxOutcome, Verdict, WeightLeaf};

/// Where the watcher gets the receipts behind a settled root: the node's own store, and
/// later the network.
pub trait ReceiptSource: Send + Sync {
    /// The batch committed to by `settlement.receipts_root`, or `None` when this source
    /// does not have it (yet).
    fn batch(&self, settlement: &Settlement) -> Result<Option<Batch>>;
}

/// Batches from a [`Store`]: the receipts of the channel up to the settled seq. The batch
/// start is searched for, not assumed: a provider that declared a wrong start committed
/// to receipts from before the chain's settled seq, and those are what prove it.
#[derive(Debug)]
pub struct StoreSource<S>(pub Arc<S>);

impl<S: Store> ReceiptSource for StoreSource<S> {
    fn batch(&self, s: &Settlement) -> Result<Option<Batch>> {
        // The chain's start first: the honest case reads only the batch itself.
        let batch = self.0.receipts_after(&s.channel, s.batch_start)?;
        if let Some(found) = matching_suffix(batch, s, true)? {
            return Ok(Some(found));
        }
        // Then every earlier start, from the channel's whole history (rare: only a
        // provider that declared a wrong start gets here).
        matching_suffix(self.0.receipts_after(&s.channel, Seq::ZERO)?, s, false)
    }
}

/// Weights from the same store: the payer's and the provider's stores keep every
/// receipt's weights (`Store::put_weights`) before the receipt is signed.
impl<S: Store> AttributionSource for StoreSource<S> {
    fn weights(&self, root: &B256) -> Result<Option<attrinet_market::Weights>> {
        Ok(self.0.weights(root)?)
    }
}

/// The receipts up to the settled seq, from the first start whose batch hashes to the
/// settled root (`only_first`: try the first start only).
fn matching_suffix(receipts: Vec<StoredReceipt>, s: &Settlement, only_first: bool) -> Result<Option<Batch>> {
    let upto: Vec<_> = receipts.into_iter().filter(|r| r.receipt.receipt.seq <= s.seq).collect();
    let n = upto.len();
    let starts = if only_first { 0..1.min(n) } else { 0..n };
    let found = batch_with_root(&upto, starts.map(|start| start..n), |_| s.receipts_root)?;
    Ok(found.map(|w| Batch::new(upto[w].iter().map(|r| r.receipt.clone()).collect())))
}

/// Batches published to the watcher by root (tests; a gossip cache).
#[derive(Debug, Default)]
pub struct MemSource(Mutex<HashMap<B256, Batch>>);

impl MemSource {
    /// Makes `batch` available under `root`.
    pub fn publish(&self, root: B256, batch: Batch) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(root, batch);
    }
}

impl ReceiptSource for MemSource {
    fn batch(&self, s: &Settlement) -> Result<Option<Batch>> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&s.receipts_root).cloned())
    }
}

/// What one watcher step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Settlements checked and found honest.
    pub verified: Vec<(ChannelId, Seq)>,
    /// Disputes submitted: channel, fraud class, transaction.
    pub disputed: Vec<(ChannelId, &'static str, TxOutcome)>,
    /// Settlements made because a payer thawed.
    pub settled_on_thaw: Vec<(ChannelId, Seq)>,
    /// Settlements the watcher could not check in time, or whose fraud no dispute can prove.
    pub failed: Vec<(ChannelId, String)>,
    /// Receipts whose committed weights are not what the model's datanet gives for their
    /// output. The chain cannot recompute attribution, so no dispute proves this; it is
    /// reported (and logged at error) for people to act on.
    pub misattributed: Vec<(ChannelId, Seq, String)>,
}

#[derive(Clone, Debug)]
enum Watched {
    Settlement {
        channel: ChannelId,
        provider: Address,
        seq: Seq,
        receipts_root: B256,
        batch_start: Seq,
        deadline: u64,
        ev: Box<ChannelEvent>,
    },
    Thaw {
        channel: ChannelId,
        thaw_end: u64,
    },
}

/// Follows the chain and acts on settlements and thaws.
#[derive(Debug)]
pub struct Watcher<C, S = MemStore> {
    client: ChainClient,
    follower: EventFollower<C>,
    source: Arc<dyn ReceiptSource>,
    settler: Option<Arc<SettlementLoop<S>>>,
    attribution: Option<Arc<dyn AttributionSource>>,
    datanets: BTreeMap<ModelId, Arc<Datanet>>,
    unresolved: BTreeMap<Cursor, Watched>,
    seen: BTreeSet<Cursor>,
}

impl std::fmt::Debug for dyn ReceiptSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptSource")
    }
}

impl<C: Checkpoint, S: Store> Watcher<C, S> {
    /// A watcher disputing as `client`'s account, reading events through `follower` and
    /// batches from `source`. With `settler`, it also settles that provider's channels
    /// when their payers thaw.
    pub fn new(
        client: ChainClient,
        follower: EventFollower<C>,
        source: Arc<dyn ReceiptSource>,
        settler: Option<Arc<SettlementLoop<S>>>,
    ) -> Watcher<C, S> {
        Watcher {
            client,
            follower,
            source,
            settler,
            attribution: None,
            datanets: BTreeMap::new(),
            unresolved: BTreeMap::new(),
            seen: BTreeSet::new(),
        }
    }

    /// Where the watcher finds receipts' weights when the batch comes without them, and
    /// their outputs for recomputing the weights.
    pub fn with_attribution(mut self, source: Arc<dyn AttributionSource>) -> Watcher<C, S> {
        self.attribution = Some(source);
        self
    }

    /// Recomputes the weights of `model`'s receipts against `datanet` (when their outputs
    /// are available) and reports those that differ. The datanet must be the one the
    /// model is registered with; a different one is reported instead of used.
    pub fn with_datanet(mut self, model: ModelId, datanet: Arc<Datanet>) -> Watcher<C, S> {
        self.datanets.insert(model, datanet);
        self
    }

    /// Reads new events, acts on every unresolved settlement and thaw, and commits the
    /// checkpoint up to the oldest one still unresolved.
    pub async fn step(&mut self) -> Result<StepReport> {
        let mut report = StepReport::default();
        for e in self.follower.poll().await? {
            // Idempotent per log: a log read twice in one session is acted on once.
            if !self.seen.insert(e.cursor) {
                continue;
            }
            match &e.event {
                ChannelEvent::Settled { channel, provider, seq, receipts_root, batch_start, deadline, .. } => {
                    tracing::info!(target: "chain::watcher", %channel, %seq, deadline, "settlement to check");
                    self.unresolved.insert(
                        e.cursor,
                        Watched::Settlement {
                            channel: *channel,
                            provider: *provider,
                            seq: *seq,
                            receipts_root: *receipts_root,
                            batch_start: *batch_start,
                            deadline: *deadline,
                            ev: Box::new(e.event.clone()),
                        },
                    );
                }
                ChannelEvent::Thawing { channel, provider, thaw_end, .. }
                    if self.settler.as_ref().is_some_and(|s| s.account() == *provider) =>
                {
                    tracing::info!(target: "chain::watcher", %channel, thaw_end, "payer thaws: settling first");
                    self.unresolved.insert(e.cursor, Watched::Thaw { channel: *channel, thaw_end: *thaw_end });
                }
                _ => {}
            }
        }

        let (_, now) = self.client.head().await?;
        let todo: Vec<_> = self.unresolved.iter().map(|(c, w)| (*c, w.clone())).collect();
        for (cursor, w) in todo {
            let resolved = match &w {
                Watched::Settlement { .. } => self.check_settlement(&w, now, &mut report).await,
                Watched::Thaw { channel, thaw_end } => self.handle_thaw(*channel, *thaw_end, now, &mut report).await,
            };
            match resolved {
                Ok(true) => {
                    self.unresolved.remove(&cursor);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(target: "chain::watcher", ?cursor, %e, "will retry"),
            }
        }

        let commit = match self.unresolved.keys().next() {
            Some(oldest) => oldest.before(),
            None => self.follower.position(),
        };
        self.follower.commit(commit)?;
        // What is committed is never read again in this session: forget it.
        self.seen.retain(|c| *c > commit);
        Ok(report)
    }

    /// Steps every `interval` until `shutdown` turns true.
    pub async fn run(&mut self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.step().await {
                tracing::warn!(target: "chain::watcher", %e, "watcher step failed");
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

    /// Ok(true) when the settlement needs no more attention.
    async fn check_settlement(&self, w: &Watched, now: u64, report: &mut StepReport) -> Result<bool> {
        let Watched::Settlement { channel, provider, seq, receipts_root, batch_start, deadline, ev } = w else {
            return Ok(true);
        };
        let channel = *channel;
        // Act only on what the chain still holds: a replayed event of a settlement that
        // was finalized or voided since is done.
        let Some(p) = self.client.pending(channel).await? else { return Ok(true) };
        if p.seq != *seq || p.receipts_root != *receipts_root || p.deadline != *deadline {
            return Ok(true);
        }
        if now >= *deadline {
            report.failed.push((channel, format!("window of seq {seq} ended before it could be checked")));
            return Ok(true);
        }
        let ChannelEvent::Settled { cumulative, amount, payouts, .. } = &**ev else { return Ok(true) };
        let info = self.client.channel(channel).await?;
        let settlement = Settlement {
            channel,
            payer: info.payer,
            provider: *provider,
            seq: *seq,
            cumulative: *cumulative,
            amount: *amount,
            receipts_root: *receipts_root,
            batch_start: *batch_start,
            deadline: *deadline,
            payouts: payouts.clone(),
        };
        let Some(mut batch) = self.source.batch(&settlement)? else {
            tracing::warn!(target: "chain::watcher", %channel, %seq, "batch not available yet");
            return Ok(false);
        };
        if batch.weights.is_none()
            && let Some(source) = &self.attribution
        {
            let receipts: Vec<_> = batch.receipts.iter().map(|r| r.receipt.clone()).collect();
            // Missing weights leave the batch without them: examine says what that means.
            if let Ok(weights) = weights_of(&receipts, source.as_ref()) {
                batch.weights = Some(weights.iter().map(WeightLeaf::of).collect());
            }
        }
        let models = batch.receipts.iter().map(|r| r.receipt.model).chain(settlement.payouts.iter().map(|p| p.model));
        let terms = self.client.terms_of(models).await?;
        let verdict = match examine(&settlement, &batch, &terms) {
            // Honest by the batch's own rules: then are its weights paid to contributors
            // of the model's datanet at all?
            Ok(Verdict::Honest) => match self.outsider(&batch).await? {
                Some(proof) => Ok(Verdict::Fraud(Box::new(proof))),
                None => Ok(Verdict::Honest),
            },
            other => other,
        };
        match verdict {
            Ok(Verdict::Honest) => {
                tracing::info!(target: "chain::watcher", %channel, %seq, "settlement verified");
                report.verified.push((channel, *seq));
                for (s, reason) in self.recompute_weights(&batch).await? {
                    tracing::error!(target: "chain::watcher", %channel, seq = %s, %reason, "misattributed receipt");
                    report.misattributed.push((channel, s, reason));
                }
                Ok(true)
            }
            Ok(Verdict::Fraud(proof)) => {
                let kind = proof.kind();
                tracing::warn!(target: "chain::watcher", %channel, %seq, kind, "fraud found: disputing");
                let outcome = self.dispute(channel, &proof).await?;
                report.disputed.push((channel, kind, outcome));
                Ok(true)
            }
            Ok(Verdict::Unprovable(reason)) => {
                tracing::error!(target: "chain::watcher", %channel, %seq, %reason, "bad settlement that no dispute can prove");
                report.failed.push((channel, reason));
                Ok(true)
            }
            // E.g. the source's batch is not the settled one: kept, another fetch may
            // bring the right one before the deadline.
            Err(e) => Err(e),
        }
    }

    /// Evidence that a weight of the batch pays an address outside its model's registered
    /// datanet ([`outsider`]), with what the registry says of each weighted model.
    async fn outsider(&self, batch: &Batch) -> Result<Option<FraudProof>> {
        let Some(weights) = &batch.weights else { return Ok(None) };
        let mut registered = BTreeMap::new();
        for (sr, ws) in batch.receipts.iter().zip(weights) {
            let model = sr.receipt.model;
            if ws.is_empty() || registered.contains_key(&model) {
                continue;
            }
            let root = self.client.datanet_root(model).await?;
            let since = self.client.datanet_judged_from(model).await?;
            if let Some((root, judged_from)) = root.zip(since) {
                registered.insert(model, Registered { root, judged_from });
            }
        }
        outsider(batch, &registered, &self.datanets)
    }

    /// The receipts of `batch` whose committed weights differ from what the model's datanet
    /// gives for their output, with why.
    async fn recompute_weights(&self, batch: &Batch) -> Result<Vec<(Seq, String)>> {
        let mut out = Vec::new();
        let Some(source) = &self.attribution else { return Ok(out) };
        let mut checked: BTreeMap<ModelId, bool> = BTreeMap::new();
        for sr in &batch.receipts {
            let r = &sr.receipt;
            let Some(datanet) = self.datanets.get(&r.model) else { continue };
            let same = match checked.get(&r.model) {
                Some(same) => *same,
                None => {
                    let registered = self.client.datanet_root(r.model).await?;
                    let same = registered == Some(datanet.root());
                    if !same {
                        out.push((
                            r.seq,
                            format!(
                                "the watcher's datanet for model {} is {}, the registered one {:?}: not recomputed",
                                r.model,
                                datanet.root(),
                                registered
                            ),
                        ));
                    }
                    checked.insert(r.model, same);
                    same
                }
            };
            if !same {
                continue;
            }
            let Some(output) = source.output(&r.response_hash)? else { continue };
            if response_hash(&output) != r.response_hash {
                continue;
            }
            let weights = datanet.attribute(&output).weights;
            if weights.root() != r.attribution_root {
                out.push((
                    r.seq,
                    format!(
                        "committed attribution root {} but the datanet gives {} ({} contributors)",
                        r.attribution_root,
                        weights.root(),
                        weights.len()
                    ),
                ));
            }
        }
        Ok(out)
    }

    async fn dispute(&self, channel: ChannelId, proof: &FraudProof) -> Result<TxOutcome> {
        self.client.dispute(channel, proof).await
    }

    async fn handle_thaw(&self, channel: ChannelId, thaw_end: u64, now: u64, report: &mut StepReport) -> Result<bool> {
        let Some(settler) = &self.settler else { return Ok(true) };
        match settler.settle_channel(channel, true).await? {
            SettleAction::Settled { seq, .. } => {
                report.settled_on_thaw.push((channel, seq));
                Ok(false) // keep following until it is final and nothing is left
            }
            SettleAction::Pending { .. } | SettleAction::Finalized { .. } => Ok(false),
            SettleAction::NothingToSettle | SettleAction::Closed => Ok(true),
            other => {
                // force = true never yields these; give up once the payer can withdraw.
                tracing::warn!(target: "chain::watcher", %channel, ?other, "unexpected settlement outcome on thaw");
                Ok(now >= thaw_end)
            }
        }
    }
}
