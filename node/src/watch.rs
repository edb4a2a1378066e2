//! `attrinet watch`'s sources of evidence: this data dir's store (the receipts it is a
//! party to) and, with a network, the batches providers hand out over
//! `/attrinet/batch/1`, fetched as soon as their settlement appears on chain.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::B256;
use attrinet_chain::{
    AttributionSource, Batch, ChainClient, ChannelEvent, EventFollower, FileCheckpoint, MemAttribution, MemSource,
    ReceiptSource, Settlement, StoreSource,
};
use attrinet_market::{Store, SumTree, Weights};
use attrinet_p2p::{BatchRequest, Client, fetch_batch, key_peer};

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

/// Fetches the batches of new settlements from their providers.
#[derive(Debug)]
pub struct BatchFetcher {
    network: Client,
    chain: ChainClient,
    follower: EventFollower<FileCheckpoint>,
    evidence: Arc<Evidence>,
}

impl BatchFetcher {
    /// Follows the chain from the watcher's checkpoint (read, never written here).
    pub fn new(network: Client, chain: ChainClient, checkpoint: &std::path::Path, evidence: Arc<Evidence>) -> anyhow::Result<BatchFetcher> {
        let d = chain.deployment();
        let follower = EventFollower::new(chain.provider().clone(), d.channels, 0, d.deploy_block, FileCheckpoint::new(checkpoint))?;
        Ok(BatchFetcher { network, chain, follower, evidence })
    }

    /// Fetches the batch of every settlement that appeared since the last call, is still
    /// in its window and is not in the store; returns a line per settlement about it.
    pub async fn fetch_new(&mut self) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let (_, now) = self.chain.head().await?;
        for e in self.follower.poll().await? {
            let ChannelEvent::Settled { channel, provider, seq, receipts_root, batch_start, deadline, .. } = e.event else { continue };
            if deadline <= now || self.evidence.store.0.channel(&channel)?.is_some() {
                continue;
            }
            let Some(peer) = self.chain.node_key(provider).await?.as_ref().and_then(key_peer) else {
                lines.push(format!("channel {channel}: provider {provider} has no usable key on chain"));
                continue;
            };
            let req = BatchRequest { channel, after: batch_start, upto: seq };
            match fetch_batch(&self.network, peer, req, Duration::from_secs(10)).await {
                Ok(fetched) => {
                    let leaves: Vec<_> = fetched.receipts.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect();
                    let matches = !leaves.is_empty() && SumTree::new(&leaves)?.root().hash == receipts_root;
                    if !matches {
                        // Not the committed batch: useless as evidence, and a node that
                        // will not show its batch leaves the payer to check it.
                        lines.push(format!("channel {channel}: provider {provider} sent a batch that is not the settled one"));
                        continue;
                    }
                    for w in fetched.weights {
                        self.evidence.weights.insert_weights(w);
                    }
                    lines.push(format!("channel {channel}: fetched {} receipts to seq {} from {provider}", fetched.receipts.len(), seq.0));
                    self.evidence.batches.publish(receipts_root, Batch::new(fetched.receipts));
                }
                Err(e) => lines.push(format!("channel {channel}: cannot fetch the batch from {provider}: {e}")),
            }
        }
        Ok(lines)
    }
}
