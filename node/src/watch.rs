//! `attrinet watch`'s sources of evidence: this data dir's store (the receipts it is a
//! party to) and, with a network, the batches providers hand out over
//! `/attrinet/batch/1`, fetched as soon as their settlement appears on chain.

use std::sync::Arc;

use alloy_primitives::B256;
use attrinet_chain::{
    AttributionSource, Batch, ChainClient, ChannelEvent, Checkpoint, EventFollower, FileCheckpoint, MemAttribution,
    MemSource, ReceiptSource, Settlement, StoreSource, Watcher,
};
use attrinet_market::{Datanet, ModelId, Store, SumTree, Weights};
use attrinet_p2p::{BatchRequest, Client, FetchTimeouts, fetch_batch, key_peer};

use crate::store::SledStore;

/// The store first, then what was fetched from the network.
#[derive(Debug)]
pub struct Evidence {
    store: StoreSource<SledStore>,
    batches: MemSource,
    weights: MemAttribution,
}

impl Evidence {
    /// Evidence from `store` alone, until batches are fetched.
    pub fn new(store: Arc<SledStore>) -> Evidence {
        Evidence { store: StoreSource(store), batches: MemSource::default(), weights: MemAttribution::default() }
    }
}

impl ReceiptSource for Evidence {
    fn batch(&self, s: &Settlement) -> attrinet_chain::Result<Option<Batch>> {
        match self.store.batch(s)? {
            Some(b) => Ok(Some(b)),
            None => self.batches.batch(s),
        }
    }
}

impl AttributionSource for Evidence {
    fn weights(&self, root: &B256) -> attrinet_chain::Result<Option<Weights>> {
        match self.store.weights(root)? {
            Some(w) => Ok(Some(w)),
            None => self.weights.weights(root),
        }
    }
}

/// Follows the deployment's Channels contract from its first block, resuming from
/// `checkpoint`.
pub fn follow_channels<C: Checkpoint>(chain: &ChainClient, checkpoint: C) -> attrinet_chain::Result<EventFollower<C>> {
    let deployment = chain.deployment();
    EventFollower::new(chain.provider().clone(), deployment.channels, 0, deployment.deploy_block, checkpoint)
}

/// A watcher disputing as `chain`'s account with `evidence` for receipts and weights, and
/// recomputing the weights of the models whose datanets it is given.
pub fn watcher<C: Checkpoint>(
    chain: ChainClient,
    checkpoint: C,
    evidence: Arc<Evidence>,
    datanets: impl IntoIterator<Item = (ModelId, Arc<Datanet>)>,
) -> attrinet_chain::Result<Watcher<C, SledStore>> {
    let follower = follow_channels(&chain, checkpoint)?;
    let watcher = Watcher::new(chain, follower, evidence.clone(), None).with_attribution(evidence);
    Ok(datanets.into_iter().fold(watcher, |w, (model, d)| w.with_datanet(model, d)))
}

/// A settlement whose batch is still to be fetched.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    channel: attrinet_market::ChannelId,
    provider: alloy_primitives::Address,
    seq: attrinet_market::Seq,
    receipts_root: B256,
    batch_start: attrinet_market::Seq,
    deadline: u64,
}

/// Fetches the batches of new settlements from their providers, retrying each until it
/// arrives or its challenge window ends.
#[derive(Debug)]
pub struct BatchFetcher {
    network: Client,
    chain: ChainClient,
    follower: EventFollower<FileCheckpoint>,
    evidence: Arc<Evidence>,
    wanted: Vec<Wanted>,
}

impl BatchFetcher {
    /// Follows the chain from the watcher's checkpoint (read, never written here).
    pub fn new(
        network: Client,
        chain: ChainClient,
        checkpoint: &std::path::Path,
        evidence: Arc<Evidence>,
    ) -> anyhow::Result<BatchFetcher> {
        let follower = follow_channels(&chain, FileCheckpoint::new(checkpoint))?;
        Ok(BatchFetcher { network, chain, follower, evidence, wanted: Vec::new() })
    }

    /// Takes in the settlements that appeared since the last call, then tries to fetch the
    /// batch of every one still in its window and not in the store; returns a line per
    /// attempt. A failure with one settlement never stops the others.
    pub async fn fetch_new(&mut self) -> anyhow::Result<Vec<String>> {
        let (_, now) = self.chain.head().await?;
        for e in self.follower.poll().await? {
            if let ChannelEvent::Settled { channel, provider, seq, receipts_root, batch_start, deadline, .. } = e.event
            {
                self.wanted.push(Wanted { channel, provider, seq, receipts_root, batch_start, deadline });
            }
        }
        let mut lines = Vec::new();
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.wanted) {
            if w.deadline <= now || self.evidence.store.0.channel(&w.channel).ok().flatten().is_some() {
                continue;
            }
            match self.fetch(&w).await {
                Ok(n) => lines.push(format!(
                    "channel {}: fetched {n} receipts to seq {} from {}",
                    w.channel, w.seq.0, w.provider
                )),
                Err(e) => {
                    lines.push(format!("channel {}: no batch from {} yet: {e:#}", w.channel, w.provider));
                    still.push(w);
                }
            }
        }
        self.wanted = still;
        Ok(lines)
    }

    /// Fetches one settlement's batch and keeps it if it is the settled one.
    async fn fetch(&self, w: &Wanted) -> anyhow::Result<usize> {
        let peer = self
            .chain
            .node_key(w.provider)
            .await?
            .as_ref()
            .and_then(key_peer)
            .ok_or_else(|| anyhow::anyhow!("the provider has no usable key on chain"))?;
        let req = BatchRequest { channel: w.channel, after: w.batch_start, upto: w.seq };
        let fetched = fetch_batch(&self.network, peer, req, FetchTimeouts::default()).await?;
        let leaves: Vec<_> = fetched.receipts.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect();
        // Not the committed batch: useless as evidence (the payer, who holds the receipts
        // too, can still check it).
        if leaves.is_empty() || SumTree::new(&leaves)?.root().hash != w.receipts_root {
            anyhow::bail!("the batch sent is not the settled one");
        }
        for weights in fetched.weights {
            self.evidence.weights.insert_weights(weights);
        }
        let n = fetched.receipts.len();
        self.evidence.batches.publish(w.receipts_root, Batch::new(fetched.receipts));
        Ok(n)
    }
}
