//! `attrinet earnings`: what an address is owed on chain, per model and per role (node,
//! model owner, data pool, protocol), finalised and still in a challenge window, read from
//! the contracts' events; plus its withdrawable balance and its data claims.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use attrinet_chain::{ChainClient, ChannelEvent, Cursor, Deployment, EventFollower, MemCheckpoint};
use attrinet_market::{Beneficiaries, ChannelId, ModelId, PayoutRun, Wei};

/// What an address earned in one role for one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// Credited by finalised settlements.
    pub finalized: Wei,
    /// In settlements still in their challenge window (credited when they finalise,
    /// unless a watcher proves them wrong).
    pub pending: Wei,
}

/// An address's earnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earnings {
    /// Credited and not yet withdrawn (node, owner, data pool and protocol shares after
    /// finalisation, and data claims).
    pub withdrawable: Wei,
    /// Per model and role ("node", "model owner", "data pool", "protocol").
    pub by_model: BTreeMap<(ModelId, &'static str), Share>,
    /// Data-contributor claims made so far, per model.
    pub claimed_by_model: BTreeMap<ModelId, Wei>,
}

/// Reads `who`'s earnings from the deployment at `endpoint`.
pub async fn earnings(endpoint: &str, deployment: Deployment, who: Address) -> anyhow::Result<Earnings> {
    // Reading needs no key of ours; a fixed throwaway one signs nothing.
    let chain = ChainClient::connect(endpoint, reader().evm, deployment)?;
    let mut follower = EventFollower::new(
        chain.provider().clone(),
        deployment.channels,
        0,
        deployment.deploy_block,
        MemCheckpoint::default(),
    )?;
    // Each channel has at most one settlement in its window; a dispute voids it.
    let mut open: BTreeMap<ChannelId, (Address, Vec<PayoutRun>)> = BTreeMap::new();
    // With where each was finalized: the owner and pool credited are those of that moment.
    let mut finalized: Vec<(Cursor, (Address, Vec<PayoutRun>))> = Vec::new();
    for e in follower.poll_all().await? {
        match e.event {
            ChannelEvent::Settled { channel, provider, payouts, .. } => {
                open.insert(channel, (provider, payouts));
            }
            ChannelEvent::Finalized { channel, .. } => finalized.extend(open.remove(&channel).map(|s| (e.cursor, s))),
            ChannelEvent::Disputed { channel, .. } => {
                open.remove(&channel);
            }
            _ => {}
        }
    }
    let treasury = chain.treasury().await?;
    let mut histories: BTreeMap<ModelId, Vec<(Cursor, Address, Address)>> = BTreeMap::new();
    let mut by_model: BTreeMap<(ModelId, &'static str), Share> = BTreeMap::new();
    // Pending settlements will credit the beneficiaries of the moment they finalize: today's.
    let now = Cursor { block: u64::MAX, log_index: u64::MAX };
    let settlements = finalized.iter().map(|(at, s)| (s, *at, true)).chain(open.values().map(|s| (s, now, false)));
    for ((provider, runs), at, done) in settlements {
        for run in runs {
            if let std::collections::btree_map::Entry::Vacant(slot) = histories.entry(run.model) {
                slot.insert(chain.beneficiary_history(run.model).await?);
            }
            // The owner and pool in force when it was credited (a transfer or a new pool
            // afterwards does not change who was paid).
            let (owner, pool) = histories[&run.model]
                .iter()
                .rev()
                .find(|(c, _, _)| *c < at)
                .map(|(_, o, p)| (*o, *p))
                .unwrap_or_default();
            let to = Beneficiaries { node: *provider, owner, data_pool: pool, protocol: treasury };
            for (role, account, amount) in run.credits(&to)? {
                if account != who || amount == Wei::ZERO {
                    continue;
                }
                let share = by_model.entry((run.model, role.name())).or_default();
                let slot = if done { &mut share.finalized } else { &mut share.pending };
                *slot = slot.checked_add(amount)?;
            }
        }
    }
    Ok(Earnings {
        withdrawable: chain.credited(who).await?,
        by_model,
        claimed_by_model: chain.claimed_data_by_model(who).await?,
    })
}

fn reader() -> attrinet_market::Identity {
    attrinet_market::Identity::from_secrets([1; 32], [1; 32]).expect("constant secret is valid")
}

impl Earnings {
    /// As text, one model and role per line.
    pub fn render(&self, who: Address) -> String {
        let mut s = format!("{who}\n  withdrawable now: {} wei\n", self.withdrawable.0);
        if self.by_model.is_empty() {
            s += "  settlements: nothing for this address yet\n";
        }
        for ((model, role), share) in &self.by_model {
            s += &format!(
                "  model {model} as {role}: {} wei finalized, {} wei pending\n",
                share.finalized.0, share.pending.0
            );
        }
        if self.claimed_by_model.is_empty() {
            s += "  data claims: none yet\n";
        }
        for (model, w) in &self.claimed_by_model {
            s += &format!("  data claimed for model {model}: {} wei\n", w.0);
        }
        s
    }
}
