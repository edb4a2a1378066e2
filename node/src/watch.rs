//! `attrinet watch`'s sources of evidence: this data dir's store (the receipts it is a
//! party to) and, with a network, the batches providers hand out over
//! `/attrinet/batch/1`, fetched as soon as their settlement appears on chain.
//!
//! Fetches run as tasks beside the watcher's checks and disputes, never in their way: a
//! provider that trickles or floods its batch holds one fetch of its own settlement and
//! delays no other's check. What is fetched is held only until its settlement's window
//! ends (no dispute is possible after it), within a memory budget that reserves the most a
//! fetch may take in ([`MAX_BATCH_BYTES`]) for every fetch in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256};
use attrinet_chain::{
    AttributionSource, Batch, ChainClient, ChannelEvent, Checkpoint, EventFollower, FileCheckpoint, ReceiptSource,
    Settlement, StoreSource, Watcher,
};
use attrinet_market::{ChannelId, Datanet, ModelId, Seq, Store, SumTree, Weights};
use attrinet_p2p::{BatchRequest, Client, FetchTimeouts, FetchedBatch, MAX_BATCH_BYTES, fetch_batch, key_peer};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::store::SledStore;

/// The most memory fetched evidence may take by default: what is held, plus
/// [`MAX_BATCH_BYTES`] reserved for each fetch in flight (so 8 fetches at once when nothing
/// is held).
pub const EVIDENCE_BUDGET: usize = 1 << 30;

/// The store first, then what was fetched from the network and is still in its window.
#[derive(Debug)]
pub struct Evidence {
    store: StoreSource<SledStore>,
    fetched: Mutex<Fetched>,
    budget: usize,
}

/// Fetched batches by receipts root, and their weights by attribution root.
#[derive(Debug, Default)]
struct Fetched {
    batches: HashMap<B256, Held>,
    /// Each with the number of held batches that brought it (weights are content-addressed,
    /// so two batches may share them).
    weights: HashMap<B256, (Weights, usize)>,
    /// Bytes of what is held, counted as encoded (what the fetch took in).
    bytes: usize,
    /// Fetches in flight, each holding [`MAX_BATCH_BYTES`] of the budget.
    reserved: usize,
    evicted: u64,
}

#[derive(Debug)]
struct Held {
    batch: Batch,
    weights: Vec<B256>,
    /// The end of the window of the settlement it is evidence for.
    deadline: u64,
    bytes: usize,
}

/// What fetched evidence holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvidenceStats {
    /// Batches held.
    pub batches: usize,
    /// Their bytes (and their weights').
    pub bytes: usize,
    /// Fetches in flight.
    pub in_flight: usize,
    /// Batches evicted once their window ended, since start.
    pub evicted: u64,
}

impl Evidence {
    /// Evidence from `store` alone, until batches are fetched, within [`EVIDENCE_BUDGET`].
    pub fn new(store: Arc<SledStore>) -> Evidence {
        Evidence::with_budget(store, EVIDENCE_BUDGET)
    }

    /// Evidence holding at most `budget` bytes of fetched batches, counting
    /// [`MAX_BATCH_BYTES`] for each fetch in flight.
    pub fn with_budget(store: Arc<SledStore>, budget: usize) -> Evidence {
        Evidence { store: StoreSource(store), fetched: Mutex::new(Fetched::default()), budget }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fetched> {
        self.fetched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes room for one more fetch, if the budget has it.
    fn reserve(&self) -> bool {
        let mut f = self.lock();
        let used = f.bytes.saturating_add(f.reserved.saturating_add(1).saturating_mul(MAX_BATCH_BYTES));
        if used > self.budget {
            return false;
        }
        f.reserved += 1;
        true
    }

    /// Gives a fetch's room back, keeping what it brought (`Some`) until `deadline`.
    fn release(&self, root: B256, deadline: u64, fetched: Option<FetchedBatch>) {
        let mut f = self.lock();
        f.reserved = f.reserved.saturating_sub(1);
        let Some(fetched) = fetched else { return };
        if let Some(held) = f.batches.get_mut(&root) {
            // The same batch settled again (after a void): held as long as either needs it.
            held.deadline = held.deadline.max(deadline);
            return;
        }
        // At most what the fetch took in, which is at most MAX_BATCH_BYTES: the budget holds.
        let bytes = fetched.receipts.iter().map(|r| attrinet_market::encode(r).len()).sum::<usize>()
            + fetched.weights.iter().map(|w| attrinet_market::encode(w).len()).sum::<usize>();
        let mut roots = Vec::new();
        for w in fetched.weights {
            let r = w.root();
            f.weights.entry(r).or_insert((w, 0)).1 += 1;
            roots.push(r);
        }
        f.bytes += bytes;
        f.batches.insert(root, Held { batch: Batch::new(fetched.receipts), weights: roots, deadline, bytes });
    }

    /// Lets go of every fetched batch whose settlement's window has ended at chain time
    /// `now`; returns how many.
    pub fn evict_ended(&self, now: u64) -> usize {
        let mut f = self.lock();
        let ended: Vec<B256> = f.batches.iter().filter(|(_, h)| h.deadline <= now).map(|(r, _)| *r).collect();
        for root in &ended {
            let Some(held) = f.batches.remove(root) else { continue };
            f.bytes = f.bytes.saturating_sub(held.bytes);
            for w in held.weights {
                if let Some((_, refs)) = f.weights.get_mut(&w) {
                    *refs -= 1;
                    if *refs == 0 {
                        f.weights.remove(&w);
                    }
                }
            }
            f.evicted += 1;
        }
        ended.len()
    }

    /// What is held now.
    pub fn stats(&self) -> EvidenceStats {
        let f = self.lock();
        EvidenceStats { batches: f.batches.len(), bytes: f.bytes, in_flight: f.reserved, evicted: f.evicted }
    }

    /// The figures of [`Evidence::stats`] in Prometheus' text format.
    pub fn metrics(&self) -> String {
        let s = self.stats();
        let rows: [(&str, &str, &str, u64); 4] = [
            ("attrinet_watch_batches_held", "gauge", "Fetched batches held for their window.", s.batches as u64),
            ("attrinet_watch_batch_bytes_held", "gauge", "Bytes of fetched batches held.", s.bytes as u64),
            ("attrinet_watch_fetches_in_flight", "gauge", "Batch fetches under way.", s.in_flight as u64),
            (
                "attrinet_watch_batches_evicted_total",
                "counter",
                "Fetched batches let go once their window ended.",
                s.evicted,
            ),
        ];
        rows.iter()
            .map(|(name, kind, help, v)| format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"))
            .collect()
    }
}

impl ReceiptSource for Evidence {
    fn batch(&self, s: &Settlement) -> attrinet_chain::Result<Option<Batch>> {
        match self.store.batch(s)? {
            Some(b) => Ok(Some(b)),
            None => Ok(self.lock().batches.get(&s.receipts_root).map(|h| h.batch.clone())),
        }
    }
}

impl AttributionSource for Evidence {
    fn weights(&self, root: &B256) -> attrinet_chain::Result<Option<Weights>> {
        match self.store.weights(root)? {
            Some(w) => Ok(Some(w)),
            None => Ok(self.lock().weights.get(root).map(|(w, _)| w.clone())),
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

/// How batch fetching shares itself out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Fetches in flight at once (the memory budget may allow fewer).
    pub in_flight: usize,
    /// Of those, fetches from one provider: one provider with many settlements cannot take
    /// every slot.
    pub per_provider: usize,
    /// Each fetch's timeouts; its total is cut to what is left of the settlement's window.
    pub timeouts: FetchTimeouts,
    /// How long a failed fetch waits before it is tried again.
    pub retry_after: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            in_flight: 8,
            per_provider: 2,
            timeouts: FetchTimeouts::default(),
            retry_after: Duration::from_secs(2),
        }
    }
}

/// A settlement whose batch is still to be fetched.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    channel: ChannelId,
    provider: Address,
    seq: Seq,
    receipts_root: B256,
    batch_start: Seq,
    deadline: u64,
    /// Not tried again before this.
    not_before: Instant,
}

/// A fetch under way.
#[derive(Debug)]
struct Running {
    wanted: Wanted,
    abort: AbortHandle,
}

/// Fetches the batches of new settlements from their providers, at most
/// [`FetchLimits::in_flight`] at once and earliest window first, retrying each until it
/// arrives or its window ends, when a fetch still under way is dropped.
#[derive(Debug)]
pub struct BatchFetcher {
    network: Client,
    chain: ChainClient,
    follower: EventFollower<FileCheckpoint>,
    evidence: Arc<Evidence>,
    limits: FetchLimits,
    wanted: Vec<Wanted>,
    tasks: JoinSet<anyhow::Result<FetchedBatch>>,
    running: HashMap<tokio::task::Id, Running>,
}

impl BatchFetcher {
    /// Follows the chain from the watcher's checkpoint (read, never written here).
    pub fn new(
        network: Client,
        chain: ChainClient,
        checkpoint: &std::path::Path,
        evidence: Arc<Evidence>,
        limits: FetchLimits,
    ) -> anyhow::Result<BatchFetcher> {
        let follower = follow_channels(&chain, FileCheckpoint::new(checkpoint))?;
        Ok(BatchFetcher {
            network,
            chain,
            follower,
            evidence,
            limits,
            wanted: Vec::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        })
    }

    /// Takes in the settlements that appeared since the last call, lets go of everything
    /// whose window has ended (held batches, fetches under way, settlements waiting), and
    /// starts the fetches the limits allow; returns a line for each thing done. Never waits
    /// for a fetch.
    pub async fn poll(&mut self) -> anyhow::Result<Vec<String>> {
        let (_, now) = self.chain.head().await?;
        for e in self.follower.poll().await? {
            if let ChannelEvent::Settled { channel, provider, seq, receipts_root, batch_start, deadline, .. } = e.event
            {
                let not_before = Instant::now();
                self.wanted.push(Wanted { channel, provider, seq, receipts_root, batch_start, deadline, not_before });
            }
        }
        let mut lines = Vec::new();
        let evicted = self.evidence.evict_ended(now);
        if evicted > 0 {
            lines.push(format!("let go of {evicted} fetched batch(es): their windows ended"));
        }
        for r in self.running.values().filter(|r| r.wanted.deadline <= now) {
            // Its completion is reported as given up.
            r.abort.abort();
        }
        let store = &self.evidence.store.0;
        self.wanted.retain(|w| w.deadline > now && store.channel(&w.channel).ok().flatten().is_none());
        // Earliest window first: the settlement that can be disputed the shortest is fetched first.
        self.wanted.sort_by_key(|w| w.deadline);
        let mut i = 0;
        while i < self.wanted.len() && self.running.len() < self.limits.in_flight {
            let w = self.wanted[i];
            let from_provider = self.running.values().filter(|r| r.wanted.provider == w.provider).count();
            if w.not_before > Instant::now() || from_provider >= self.limits.per_provider {
                i += 1;
                continue;
            }
            if !self.evidence.reserve() {
                break; // the budget is full until something is evicted or a fetch ends
            }
            self.wanted.remove(i);
            self.start(w, now);
        }
        Ok(lines)
    }

    fn start(&mut self, w: Wanted, now: u64) {
        let (network, chain) = (self.network.clone(), self.chain.clone());
        // Never past the window: a batch that comes after it is no use.
        let left = Duration::from_secs(w.deadline.saturating_sub(now));
        let timeouts = FetchTimeouts { total: self.limits.timeouts.total.min(left), ..self.limits.timeouts };
        let abort = self.tasks.spawn(fetch(network, chain, w, timeouts));
        self.running.insert(abort.id(), Running { wanted: w, abort });
    }

    /// Waits for the next fetch to end (for ever when none is under way), keeps what it
    /// brought, and returns a line saying how it went.
    pub async fn next_done(&mut self) -> String {
        let Some(done) = self.tasks.join_next_with_id().await else { return std::future::pending().await };
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            // Cancelled by `poll` once the window ended (or the task panicked): not retried.
            Err(e) => (e.id(), None),
        };
        let Some(Running { wanted: w, .. }) = self.running.remove(&id) else {
            // Every task is entered in `running` as it is spawned.
            return "a batch fetch ended that was never started".into();
        };
        match outcome {
            Some(Ok(fetched)) => {
                let n = fetched.receipts.len();
                self.evidence.release(w.receipts_root, w.deadline, Some(fetched));
                format!("channel {}: fetched {n} receipts to seq {} from {}", w.channel, w.seq.0, w.provider)
            }
            Some(Err(e)) => {
                self.evidence.release(w.receipts_root, w.deadline, None);
                self.wanted.push(Wanted { not_before: Instant::now() + self.limits.retry_after, ..w });
                format!("channel {}: no batch from {} yet: {e:#}", w.channel, w.provider)
            }
            None => {
                self.evidence.release(w.receipts_root, w.deadline, None);
                format!(
                    "channel {}: gave up fetching from {}: the window of seq {} ended",
                    w.channel, w.provider, w.seq.0
                )
            }
        }
    }

    /// Waits for every fetch under way to end; a line for each.
    pub async fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while !self.running.is_empty() {
            lines.push(self.next_done().await);
        }
        lines
    }
}

/// Fetches one settlement's batch, and keeps it only if it is the settled one.
async fn fetch(
    network: Client,
    chain: ChainClient,
    w: Wanted,
    timeouts: FetchTimeouts,
) -> anyhow::Result<FetchedBatch> {
    let peer = chain
        .node_key(w.provider)
        .await?
        .as_ref()
        .and_then(key_peer)
        .ok_or_else(|| anyhow::anyhow!("the provider has no usable key on chain"))?;
    let req = BatchRequest { channel: w.channel, after: w.batch_start, upto: w.seq };
    let fetched = fetch_batch(&network, peer, req, timeouts).await?;
    let leaves: Vec<_> = fetched.receipts.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect();
    // Not the committed batch: useless as evidence (the payer, who holds the receipts
    // too, can still check it).
    if leaves.is_empty() || SumTree::new(&leaves)?.root().hash != w.receipts_root {
        anyhow::bail!("the batch sent is not the settled one");
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrinet_market::{PPM_WHOLE, Weight};

    fn weights(byte: u8) -> Weights {
        Weights::new(vec![Weight { contributor: Address::repeat_byte(byte), ppm: PPM_WHOLE }]).unwrap()
    }

    #[test]
    fn fetches_reserve_the_budget_and_batches_leave_with_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let evidence = Evidence::with_budget(store, 3 * MAX_BATCH_BYTES);
        // Three fetches fill the budget; a fourth waits.
        assert!(evidence.reserve() && evidence.reserve() && evidence.reserve());
        assert!(!evidence.reserve());
        // Two batches that share weights, one ending at 100, one at 200; the third fetch failed.
        let (a, b) = (B256::repeat_byte(0xa), B256::repeat_byte(0xb));
        let shared = weights(1);
        let batch = |w: Vec<Weights>| Some(FetchedBatch { receipts: Vec::new(), weights: w });
        evidence.release(a, 100, batch(vec![shared.clone(), weights(2)]));
        evidence.release(b, 200, batch(vec![shared.clone()]));
        evidence.release(B256::ZERO, 300, None);
        let held = evidence.stats();
        assert_eq!((held.batches, held.in_flight, held.evicted), (2, 0, 0));
        assert!(held.bytes > 0);
        // What is held counts against the budget too.
        assert!(evidence.reserve() && evidence.reserve());
        assert!(!evidence.reserve(), "held bytes and two reservations leave no room for a third");

        assert_eq!(evidence.evict_ended(99), 0);
        assert_eq!(evidence.evict_ended(100), 1);
        assert!(evidence.weights(&shared.root()).unwrap().is_some(), "still needed by the batch ending at 200");
        assert!(evidence.weights(&weights(2).root()).unwrap().is_none());
        assert_eq!(evidence.evict_ended(250), 1);
        assert!(evidence.weights(&shared.root()).unwrap().is_none());
        let s = evidence.stats();
        assert_eq!((s.batches, s.bytes, s.in_flight, s.evicted), (0, 0, 2, 2));
        assert!(evidence.metrics().contains("attrinet_watch_batches_evicted_total 2\n"), "{}", evidence.metrics());
    }
}
