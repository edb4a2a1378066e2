//! The paying side as the CLI and the gateway use it: channels opened on chain and
//! recorded in the local store, opened on demand with the best provider of a model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use anyhow::{Context, bail};
use attrinet_chain::{ChainClient, ChannelInfo};
use attrinet_market::{
    ChannelId, ChannelParams, ChannelState, Demand, Identity, ModelAdvert, ProviderBook, Store, Wei, rank,
};
use attrinet_p2p::{Client, unix_now};

use crate::store::SledStore;

/// Opens channels for a payer: on chain first, then in its store, so that the next
/// request finds it.
#[derive(Clone, Debug)]
pub struct ChannelOpener {
    /// The payer's keys.
    pub identity: Identity,
    /// Its chain account.
    pub chain: ChainClient,
    /// Its store.
    pub store: Arc<SledStore>,
    /// What a channel opened on demand holds.
    pub deposit: Wei,
}

impl ChannelOpener {
    /// Opens a channel to `provider` (a registered node) with `deposit` and records it.
    pub async fn open(&self, provider: Address, deposit: Wei) -> anyhow::Result<ChannelState> {
        let provider_key =
            self.chain.node_key(provider).await?.with_context(|| format!("{provider} is not a registered node"))?;
        let (id, _) = self.chain.open(provider, &self.identity.public_key(), deposit).await?;
        let state = ChannelState::open(
            ChannelParams {
                domain: self.chain.deployment().domain(),
                id,
                payer: self.identity.address(),
                provider,
                payer_key: self.identity.public_key(),
                provider_key,
            },
            deposit,
        );
        // Stored right after the chain accepted it: a crash in between leaves a channel
        // on chain that `channel status` does not list, and the deposit is still
        // withdrawable after a thaw.
        self.store.put_channel(&state)?;
        Ok(state)
    }

    /// Makes sure this payer has a channel with deposit left with at least one provider of
    /// `model`: when it has none, opens one with the best-ranked provider. Returns the channel opened,
    /// if any.
    pub async fn ensure(
        &self,
        network: &Client,
        model: &str,
        max_tokens: u32,
        max_cost: Option<Wei>,
    ) -> anyhow::Result<Option<ChannelState>> {
        let offers = network.market().await?.find(model, unix_now());
        let me = self.identity.address();
        let mine: Vec<ChannelState> =
            self.store.channels()?.into_iter().filter(|c| c.params.payer == me && c.has_deposit_left()).collect();
        if offers
            .iter()
            .any(|a| mine.iter().any(|c| c.params.provider_key == a.node_key && c.params.provider == a.evm_address))
        {
            return Ok(None);
        }
        let demand = Demand { input_tokens: 0, max_output_tokens: max_tokens, max_cost };
        for best in rank(&offers, &demand, &ProviderBook::new()) {
            // An advert is signed by its node's key but may name any address: pay only an
            // address whose registered node has that key, or a node could steer deposits
            // to an address that is not the one serving.
            let registered = self.chain.node_key(best.evm_address).await?;
            if registered != Some(best.node_key) {
                tracing::warn!(
                    target: "client",
                    address = %best.evm_address,
                    "an advert names an address registered with another key (or none): passed over"
                );
                continue;
            }
            return Ok(Some(self.open(best.evm_address, self.deposit).await?));
        }
        Ok(None)
    }
}

/// Connects to the chain and checks that the endpoint serves the deployment's chain: receipts
/// and vouchers signed under another chain id would all be refused at settlement.
pub async fn connect_chain(
    rpc: &str,
    identity: &Identity,
    deployment: attrinet_chain::Deployment,
) -> anyhow::Result<ChainClient> {
    let chain = ChainClient::connect(rpc, identity.evm.clone(), deployment)?;
    let id = chain.rpc_chain_id().await.with_context(|| format!("cannot reach the chain at {rpc}"))?;
    if id != deployment.chain_id {
        bail!(
            "the chain at {rpc} has id {id}, but the configuration says {}: set --chain-id (or chain_id under [chain])",
            deployment.chain_id
        );
    }
    Ok(chain)
}

/// Waits up to `wait` for adverts of `model` (any model when empty) to reach this node.
pub async fn wait_for_offers(network: &Client, model: &str, wait: Duration) -> anyhow::Result<Vec<ModelAdvert>> {
    let deadline = Instant::now() + wait;
    loop {
        let view = network.market().await?;
        let offers = if model.is_empty() { view.all(unix_now()) } else { view.find(model, unix_now()) };
        if !offers.is_empty() || Instant::now() >= deadline {
            return Ok(offers);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line of `attrinet channel status`: the local ledger next to the chain's view.
#[derive(Clone, Debug)]
pub struct ChannelLine {
    /// Stored state.
    pub local: ChannelState,
    /// The chain's state, or why it could not be read.
    pub chain: Result<ChannelInfo, String>,
}

/// Every channel of the store with the chain's view of it.
pub async fn channel_status(store: &SledStore, chain: &ChainClient) -> anyhow::Result<Vec<ChannelLine>> {
    let mut lines = Vec::new();
    for local in store.channels()? {
        let chain = chain.channel(local.params.id).await.map_err(|e| e.to_string());
        lines.push(ChannelLine { local, chain });
    }
    Ok(lines)
}

impl ChannelLine {
    /// As text.
    pub fn render(&self, me: Address) -> String {
        let p = &self.local.params;
        let role = if p.payer == me {
            "payer"
        } else if p.provider == me {
            "provider"
        } else {
            "other"
        };
        let mut s = format!("channel {}  ({role})\n  payer {}  provider {}\n", p.id, p.payer, p.provider);
        s += &format!(
            "  local: last seq {}, cumulative {} wei, settled to seq {}\n",
            self.local.last_seq.0, self.local.cumulative.0, self.local.settled_seq.0
        );
        match &self.chain {
            Ok(c) => {
                let left = c.deposit.0.saturating_sub(self.local.cumulative.0);
                let state = if c.closed {
                    "closed".to_string()
                } else if c.thaw_end > 0 {
                    format!("thawing until {} (unix)", c.thaw_end)
                } else {
                    "open".to_string()
                };
                s += &format!(
                    "  chain: {state}, deposit {} wei, settled {} wei to seq {}, {left} wei left to spend\n",
                    c.deposit.0, c.settled.0, c.settled_seq.0
                );
            }
            Err(e) => s += &format!("  chain: unreadable ({e})\n"),
        }
        s
    }
}

/// Parses a channel id (0x + 64 hex digits).
pub fn parse_channel(s: &str) -> Result<ChannelId, String> {
    s.parse::<alloy_primitives::B256>()
        .map(ChannelId)
        .map_err(|_| format!("`{s}` is not a channel id (0x and 64 hex digits)"))
}

/// Refuses a channel this payer does not know: actions on other people's channels fail
/// on chain anyway, with a less helpful message.
pub fn own_channel(store: &SledStore, id: ChannelId, me: Address) -> anyhow::Result<ChannelState> {
    let Some(state) = store.channel(&id)? else {
        bail!("channel {id} is not in this data dir's store (see `attrinet channel status`)")
    };
    if state.params.payer != me {
        bail!("channel {id} is paid by {}, not by this node's account {me}", state.params.payer);
    }
    Ok(state)
}

/// Takes adverts only from nodes registered on chain (`Registry.nodeByKey`): what a node
/// that follows the chain hands its network as [`attrinet_p2p::NetConfig::publishers`].
#[derive(Debug, Clone)]
pub struct RegisteredPublishers(pub ChainClient);

impl attrinet_p2p::PublisherCheck for RegisteredPublishers {
    fn registered(&self, key: attrinet_market::PublicKey) -> futures::future::BoxFuture<'static, Result<bool, String>> {
        let chain = self.0.clone();
        Box::pin(async move { chain.node_of_key(&key).await.map(|node| node.is_some()).map_err(|e| e.to_string()) })
    }
}
