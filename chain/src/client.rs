//! The settlement client: one account on one deployment of Registry and Channels.

use std::collections::BTreeMap;

use alloy::contract::{CallBuilder, CallDecoder, SolCallBuilder};
use alloy::network::{Ethereum, EthereumWallet};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use attrinet_market::{
    ChannelId, DataClaim, ModelId, PayoutRun, Price, PublicKey, Seq, SignedVoucher, Split, TermsHistory, TermsVersion,
    Wei,
};

use crate::abi::{self, Channels, Registry, data_disputes::DataDisputes};
use crate::error::{ChainError, Result, RpcError};
use crate::types::{ChannelInfo, Cursor, DeployConfig, Deployment, FraudProof, ModelTerms, PendingInfo, TxOutcome};

/// A client of the contracts, signing as one account.
#[derive(Clone, Debug)]
pub struct ChainClient {
    provider: DynProvider,
    account: Address,
    deployment: Deployment,
}

fn rpc(call: &'static str) -> impl FnOnce(alloy::transports::TransportError) -> ChainError {
    move |source| RpcError::Call { call, source }.into()
}

/// Turns a contract error into one that names the contract's custom error.
fn reverted(call: &'static str) -> impl FnOnce(alloy::contract::Error) -> ChainError {
    move |e| {
        let reason = if let Some(c) = e.as_decoded_interface_error::<Channels::ChannelsErrors>() {
            format!("{c:?}")
        } else if let Some(d) = e.as_decoded_interface_error::<DataDisputes::DataDisputesErrors>() {
            format!("{d:?}")
        } else if let Some(r) = e.as_decoded_interface_error::<Registry::RegistryErrors>() {
            format!("{r:?}")
        } else {
            e.to_string()
        };
        RpcError::Reverted { call, reason }.into()
    }
}

fn wei(x: u128) -> Wei {
    Wei(x)
}

fn u128_of(what: &'static str, x: U256) -> Result<u128> {
    u128::try_from(x).map_err(|_| RpcError::OutOfRange { what, value: x.to_string() }.into())
}

fn wallet_provider(endpoint: &str, signer: PrivateKeySigner) -> Result<DynProvider> {
    let url = endpoint
        .parse()
        .map_err(|e| RpcError::BadEndpoint { endpoint: endpoint.to_string(), reason: format!("{e}") })?;
    // Nonces are read from the node for every transaction, never cached: a transaction
    // that fails before it is sent (a revert found by gas estimation) must not leave a
    // gap that would strand every later one, and a restarted process must not reuse one.
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url)
        .erased())
}

impl ChainClient {
    /// Deploys Registry and Channels and binds them to each other, signing as `signer`.
    pub async fn deploy(endpoint: &str, signer: PrivateKeySigner, config: DeployConfig) -> Result<Deployment> {
        let provider = wallet_provider(endpoint, signer)?;
        let chain_id = provider.get_chain_id().await.map_err(rpc("eth_chainId"))?;
        let registry = Registry::deploy(provider.clone(), config.treasury, config.unbond_delay)
            .await
            .map_err(reverted("deploy Registry"))?;
        let channels = Channels::deploy(
            provider.clone(),
            *registry.address(),
            config.challenge_window,
            config.thaw_delay,
            config.min_bond.0,
        )
        .await
        .map_err(reverted("deploy Channels"))?;
        let out = send("Registry.setChannels", registry.setChannels(*channels.address())).await?;
        let deployment = Deployment {
            chain_id,
            registry: *registry.address(),
            channels: *channels.address(),
            deploy_block: out.block,
        };
        tracing::info!(target: "chain::client", ?deployment, "contracts deployed");
        Ok(deployment)
    }

    /// A client of an existing deployment, signing as `signer`.
    pub fn connect(endpoint: &str, signer: PrivateKeySigner, deployment: Deployment) -> Result<ChainClient> {
        let account = signer.address();
        Ok(ChainClient { provider: wallet_provider(endpoint, signer)?, account, deployment })
    }

    /// The account this client signs as.
    pub fn account(&self) -> Address {
        self.account
    }

    /// The deployment it talks to.
    pub fn deployment(&self) -> Deployment {
        self.deployment
    }

    /// The underlying provider (for reads the client does not wrap).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    // Instances own a clone of the provider (an Arc inside); their call builders borrow it.
    fn registry(&self) -> Registry::RegistryInstance<DynProvider> {
        Registry::new(self.deployment.registry, self.provider.clone())
    }

    fn channels(&self) -> Channels::ChannelsInstance<DynProvider> {
        Channels::new(self.deployment.channels, self.provider.clone())
    }

    // ------------------------------------------------------------ nodes and models

    /// Registers this account as a node with its ed25519 key and a bond.
    pub async fn register_node(&self, key: &PublicKey, bond: Wei) -> Result<TxOutcome> {
        send("Registry.registerNode", self.registry().registerNode(B256::from(key.0)).value(U256::from(bond.0))).await
    }

    /// Where the protocol's share goes.
    pub async fn treasury(&self) -> Result<Address> {
        self.registry().treasury().call().await.map_err(reverted("Registry.treasury"))
    }

    /// The id of the chain the endpoint serves. Vouchers and receipts are signed under the
    /// deployment's chain id; a mismatch makes every settlement revert, so callers check it.
    pub async fn rpc_chain_id(&self) -> Result<u64> {
        self.provider.get_chain_id().await.map_err(rpc("eth_chainId"))
    }

    /// A registered node's ed25519 key, or `None` when `node` is not registered.
    pub async fn node_key(&self, node: Address) -> Result<Option<PublicKey>> {
        let n = self.registry().node(node).call().await.map_err(reverted("Registry.node"))?;
        Ok((!n.key.is_zero()).then_some(PublicKey(n.key.0)))
    }

    /// The node registered with ed25519 key `key`, or `None` when no node is.
    pub async fn node_of_key(&self, key: &PublicKey) -> Result<Option<Address>> {
        let node = self.registry().nodeByKey(B256::from(key.0)).call().await.map_err(reverted("Registry.nodeByKey"))?;
        Ok((!node.is_zero()).then_some(node))
    }

    /// Adds to this node's bond (after a slash, before settling again).
    pub async fn add_bond(&self, amount: Wei) -> Result<TxOutcome> {
        send("Registry.addBond", self.registry().addBond().value(U256::from(amount.0))).await
    }

    /// Starts this node's unbonding delay.
    pub async fn request_unbond(&self) -> Result<TxOutcome> {
        send("Registry.requestUnbond", self.registry().requestUnbond()).await
    }

    /// Withdraws this node's bond, once the unbonding delay has passed and no settlement
    /// of the node can still be disputed.
    pub async fn withdraw_bond(&self) -> Result<TxOutcome> {
        send("Registry.withdrawBond", self.registry().withdrawBond()).await
    }

    /// Registers a model owned by this account.
    pub async fn register_model(
        &self,
        model: ModelId,
        price: Price,
        split: Split,
        datanet_root: B256,
        data_pool: Address,
    ) -> Result<TxOutcome> {
        let registry = self.registry();
        let call = registry.registerModel(model.0, abi::terms(price, split), datanet_root, data_pool);
        send("Registry.registerModel", call).await
    }

    /// Records a model's datanet commitment (`Datanet::root`) and the pool that receives
    /// the data share no contributor is owed (owner only).
    pub async fn set_datanet(&self, model: ModelId, datanet_root: B256, data_pool: Address) -> Result<TxOutcome> {
        send("Registry.setDatanet", self.registry().setDatanet(model.0, datanet_root, data_pool)).await
    }

    /// Replaces a model's prices and split (owner only).
    pub async fn update_terms(&self, model: ModelId, price: Price, split: Split) -> Result<TxOutcome> {
        send("Registry.updateTerms", self.registry().updateTerms(model.0, abi::terms(price, split))).await
    }

    /// A node's bond.
    pub async fn bond(&self, node: Address) -> Result<Wei> {
        let b = self.registry().bondOf(node).call().await.map_err(reverted("Registry.bondOf"))?;
        Ok(wei(b))
    }

    /// A model's terms, or `None` when it is not registered.
    pub async fn terms(&self, model: ModelId) -> Result<Option<ModelTerms>> {
        let t = self.registry().terms(model.0).call().await.map_err(reverted("Registry.terms"))?;
        if !t.exists {
            return Ok(None);
        }
        let (price, split) = abi::terms_of(&t.current)?;
        Ok(Some(ModelTerms { price, split, version: t.version }))
    }

    /// Every version of a model's terms, oldest first, with the registry's grace; `None`
    /// when the model is not registered. One call per version: a history is short, and
    /// the settlement loop and the watcher read it once per batch.
    pub async fn terms_history(&self, model: ModelId) -> Result<Option<TermsHistory>> {
        let registry = self.registry();
        let count = registry.termsCount(model.0).call().await.map_err(reverted("Registry.termsCount"))?;
        if count.is_zero() {
            return Ok(None);
        }
        let grace = registry.TERMS_GRACE().call().await.map_err(reverted("Registry.TERMS_GRACE"))?;
        // Versions are uint32 on chain (Registry.Model.version).
        let count: u32 = count.saturating_to();
        let mut versions = Vec::with_capacity(count as usize);
        for v in 0..count {
            let t = registry.termsVersion(model.0, v).call().await.map_err(reverted("Registry.termsVersion"))?;
            let (price, split) = abi::terms_of(&t.t)?;
            versions.push(TermsVersion { price, split, since: t.since });
        }
        Ok(Some(TermsHistory { versions, grace }))
    }

    /// Who receives a model's owner and data shares.
    pub async fn beneficiaries(&self, model: ModelId) -> Result<(Address, Address)> {
        let b = self.registry().beneficiaries(model.0).call().await.map_err(reverted("Registry.beneficiaries"))?;
        Ok((b.owner, b.dataPool))
    }

    /// Hands a model to a new owner (owner only).
    pub async fn transfer_model(&self, model: ModelId, new_owner: Address) -> Result<TxOutcome> {
        send("Registry.transferModel", self.registry().transferModel(model.0, new_owner)).await
    }

    /// Who received a model's owner and data-pool shares over time: each registration,
    /// datanet update and transfer, in chain order, with the (owner, pool) it left.
    pub async fn beneficiary_history(&self, model: ModelId) -> Result<Vec<(Cursor, Address, Address)>> {
        let filter = alloy::rpc::types::Filter::new()
            .address(self.deployment.registry)
            .topic1(model.0)
            .from_block(self.deployment.deploy_block);
        let logs = self.provider.get_logs(&filter).await.map_err(rpc("eth_getLogs"))?;
        let (mut owner, mut pool) = (Address::ZERO, Address::ZERO);
        let mut out = Vec::new();
        for log in &logs {
            let (Some(block), Some(log_index)) = (log.block_number, log.log_index) else { continue };
            if let Ok(e) = log.log_decode::<Registry::ModelRegistered>() {
                (owner, pool) = (e.inner.data.owner, e.inner.data.dataPool);
            } else if let Ok(e) = log.log_decode::<Registry::DatanetUpdated>() {
                pool = e.inner.data.dataPool;
            } else if let Ok(e) = log.log_decode::<Registry::ModelTransferred>() {
                owner = e.inner.data.to;
            } else {
                continue;
            }
            out.push((Cursor { block, log_index }, owner, pool));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ channels

    /// Opens a channel from this account to `provider` with `deposit`; `payer_key` is this
    /// account's ed25519 key, which will co-sign the channel's receipts.
    pub async fn open(&self, provider: Address, payer_key: &PublicKey, deposit: Wei) -> Result<(ChannelId, TxOutcome)> {
        let channels = self.channels();
        let call = channels.open(provider, B256::from(payer_key.0)).value(U256::from(deposit.0));
        let (out, receipt) = send_receipt("Channels.open", call).await?;
        let opened = receipt
            .decoded_log::<Channels::Opened>()
            .ok_or(RpcError::MissingEvent { call: "Channels.open", event: "Opened" })?;
        Ok((ChannelId(opened.data.channel), out))
    }

    /// Adds to a channel's deposit.
    pub async fn top_up(&self, channel: ChannelId, amount: Wei) -> Result<TxOutcome> {
        send("Channels.topUp", self.channels().topUp(channel.0).value(U256::from(amount.0))).await
    }

    /// Starts the payer's thaw.
    pub async fn thaw(&self, channel: ChannelId) -> Result<TxOutcome> {
        send("Channels.thaw", self.channels().thaw(channel.0)).await
    }

    /// Withdraws the unsettled deposit after the thaw and closes the channel.
    pub async fn withdraw_deposit(&self, channel: ChannelId) -> Result<TxOutcome> {
        send("Channels.withdrawDeposit", self.channels().withdrawDeposit(channel.0)).await
    }

    /// Settles a voucher with these payouts (provider only).
    pub async fn settle(&self, voucher: &SignedVoucher, payouts: &[PayoutRun]) -> Result<TxOutcome> {
        let channels = self.channels();
        send("Channels.settle", settle_call(&channels, voucher, payouts)).await
    }

    /// Gas `settle` would use now, for the settlement policy.
    pub async fn estimate_settle(&self, voucher: &SignedVoucher, payouts: &[PayoutRun]) -> Result<u64> {
        let channels = self.channels();
        settle_call(&channels, voucher, payouts).estimate_gas().await.map_err(reverted("Channels.settle"))
    }

    /// Finalizes a settlement after its window, crediting the beneficiaries.
    pub async fn finalize(&self, channel: ChannelId, payouts: &[PayoutRun]) -> Result<TxOutcome> {
        let channels = self.channels();
        let call = channels.finalize(channel.0, abi::payouts(payouts));
        send("Channels.finalize", call).await
    }

    /// Withdraws everything credited to this account.
    pub async fn withdraw(&self) -> Result<TxOutcome> {
        send("Channels.withdraw", self.channels().withdraw()).await
    }

    /// Submits a fraud proof against a channel's pending settlement.
    pub async fn dispute(&self, channel: ChannelId, proof: &FraudProof) -> Result<TxOutcome> {
        let call = abi::dispute(channel, proof);
        let to = match call.to {
            abi::Disputes::Channels => self.deployment.channels,
            abi::Disputes::Data => self.data_disputes().await?,
        };
        send(call.function, CallBuilder::new_raw(&self.provider, call.data).to(to)).await
    }

    /// The DataDisputes contract Channels deployed.
    pub async fn data_disputes(&self) -> Result<Address> {
        self.channels().dataDisputes().call().await.map_err(reverted("Channels.dataDisputes"))
    }

    /// The terms histories of each model in `models`, read once per model; unregistered
    /// models are left out (a settlement naming one is judged by what it can be proven of).
    pub async fn terms_of(&self, models: impl IntoIterator<Item = ModelId>) -> Result<BTreeMap<ModelId, TermsHistory>> {
        let mut terms = BTreeMap::new();
        for m in models {
            if let std::collections::btree_map::Entry::Vacant(slot) = terms.entry(m)
                && let Some(t) = self.terms_history(m).await?
            {
                slot.insert(t);
            }
        }
        Ok(terms)
    }

    /// Claims this account's data entries of run `run` of the finalized settlement of
    /// `channel` at `seq` (whose payouts are `payouts`); they are credited to it, to
    /// withdraw with [`ChainClient::withdraw`].
    pub async fn claim_data(
        &self,
        channel: ChannelId,
        seq: Seq,
        payouts: &[PayoutRun],
        run: usize,
        claim: &DataClaim,
    ) -> Result<TxOutcome> {
        let channels = self.channels();
        let call = channels.claimData(
            channel.0,
            seq.0,
            abi::payouts(payouts),
            U256::from(run),
            abi::entry(&claim.first),
            abi::proof(&claim.first_proof),
            abi::entry(&claim.last),
            abi::proof(&claim.last_proof),
        );
        send("Channels.claimData", call).await
    }

    /// Whether `contributor` has claimed its entries of run `run` of the settlement of
    /// `channel` at `seq`.
    pub async fn data_claimed(&self, channel: ChannelId, seq: Seq, run: usize, contributor: Address) -> Result<bool> {
        self.channels()
            .claimedData(channel.0, seq.0, U256::from(run), contributor)
            .call()
            .await
            .map_err(reverted("Channels.claimedData"))
    }

    /// What `contributor` has claimed so far, per model, from the `DataClaimed` events
    /// (for `attrinet earnings --contributor`).
    pub async fn claimed_data_by_model(
        &self,
        contributor: Address,
    ) -> Result<std::collections::BTreeMap<ModelId, Wei>> {
        let filter = alloy::rpc::types::Filter::new()
            .address(self.deployment.channels)
            .event_signature(Channels::DataClaimed::SIGNATURE_HASH)
            .topic3(contributor.into_word())
            .from_block(self.deployment.deploy_block);
        let logs = self.provider.get_logs(&filter).await.map_err(rpc("eth_getLogs"))?;
        let mut out = std::collections::BTreeMap::new();
        for log in &logs {
            let Ok(e) = log.log_decode::<Channels::DataClaimed>() else { continue };
            let amount = u128_of("claimed amount", e.inner.data.amount)?;
            let t: &mut Wei = out.entry(ModelId(e.inner.data.model)).or_default();
            *t = t.checked_add(Wei(amount))?;
        }
        Ok(out)
    }

    /// The data root a model is registered with (its datanet's commitment), or `None`
    /// when the model is not registered.
    pub async fn datanet_root(&self, model: ModelId) -> Result<Option<B256>> {
        let m = self.registry().model(model.0).call().await.map_err(reverted("Registry.model"))?;
        Ok((m.owner != Address::ZERO).then_some(m.datanetRoot))
    }

    /// From when (chain time) the model's receipts are judged by its current datanet in
    /// an outsider dispute: when the datanet was last set plus `DATANET_GRACE`; `None` when
    /// the model is not registered.
    pub async fn datanet_judged_from(&self, model: ModelId) -> Result<Option<u64>> {
        let m = self.registry().model(model.0).call().await.map_err(reverted("Registry.model"))?;
        if m.owner == Address::ZERO {
            return Ok(None);
        }
        let d = DataDisputes::new(self.data_disputes().await?, self.provider.clone());
        let grace = d.DATANET_GRACE().call().await.map_err(reverted("DataDisputes.DATANET_GRACE"))?;
        Ok(Some(m.datanetSince.saturating_add(grace)))
    }

    /// A channel's on-chain state.
    pub async fn channel(&self, channel: ChannelId) -> Result<ChannelInfo> {
        let c = self.channels().channel(channel.0).call().await.map_err(reverted("Channels.channel"))?;
        if c.payer == Address::ZERO {
            return Err(ChainError::UnknownChannel(channel));
        }
        Ok(ChannelInfo {
            payer: c.payer,
            provider: c.provider,
            deposit: wei(c.deposit),
            settled: wei(c.settled),
            settled_seq: Seq(c.settledSeq),
            thaw_end: c.thawEnd,
            closed: c.closed,
            payer_key: PublicKey(c.payerKey.0),
        })
    }

    /// The channel's settlement in its challenge window, if any.
    pub async fn pending(&self, channel: ChannelId) -> Result<Option<PendingInfo>> {
        let p = self.channels().pending(channel.0).call().await.map_err(reverted("Channels.pending"))?;
        Ok((p.deadline != 0).then_some(PendingInfo {
            receipts_root: p.receiptsRoot,
            payouts_hash: p.payoutsHash,
            cumulative: wei(p.cumulative),
            seq: Seq(p.seq),
            deadline: p.deadline,
        }))
    }

    /// What Channels holds for `account`, ready to withdraw.
    pub async fn credited(&self, account: Address) -> Result<Wei> {
        let b = self.channels().balanceOf(account).call().await.map_err(reverted("Channels.balanceOf"))?;
        Ok(wei(u128_of("balance", b)?))
    }

    /// The account's native balance.
    pub async fn native_balance(&self, account: Address) -> Result<Wei> {
        let b = self.provider.get_balance(account).await.map_err(rpc("eth_getBalance"))?;
        Ok(wei(u128_of("native balance", b)?))
    }

    /// The contract's EIP-712 digest of a receipt (for cross-checking the Rust digest).
    pub async fn receipt_digest(&self, receipt: &attrinet_market::Receipt) -> Result<B256> {
        self.channels().receiptDigest(abi::receipt(receipt)).call().await.map_err(reverted("Channels.receiptDigest"))
    }

    /// The contract's EIP-712 digest of a voucher.
    pub async fn voucher_digest(&self, voucher: &attrinet_market::Voucher) -> Result<B256> {
        self.channels().voucherDigest(abi::voucher(voucher)).call().await.map_err(reverted("Channels.voucherDigest"))
    }

    /// The latest block's number and timestamp.
    pub async fn head(&self) -> Result<(u64, u64)> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(rpc("eth_getBlockByNumber"))?
            .ok_or(RpcError::OutOfRange { what: "latest block", value: "none".into() })?;
        Ok((block.header.number, block.header.timestamp))
    }

    /// The gas price the next transaction would pay, in wei.
    pub async fn gas_price(&self) -> Result<Wei> {
        Ok(wei(self.provider.get_gas_price().await.map_err(rpc("eth_gasPrice"))?))
    }

    /// The payouts a settlement of `channel` at `seq` committed to, read from its
    /// `Settled` event (finalize needs them, and a restarted node no longer has them).
    pub async fn settled_payouts(&self, channel: ChannelId, seq: Seq) -> Result<Option<Vec<PayoutRun>>> {
        let filter = alloy::rpc::types::Filter::new()
            .address(self.deployment.channels)
            .event_signature(Channels::Settled::SIGNATURE_HASH)
            .topic1(channel.0)
            .from_block(self.deployment.deploy_block);
        let logs = self.provider.get_logs(&filter).await.map_err(rpc("eth_getLogs"))?;
        // The last one wins: a voided settlement of the same seq may precede the live one.
        for log in logs.iter().rev() {
            let Ok(e) = log.log_decode::<Channels::Settled>() else { continue };
            if e.inner.data.seq == seq.0 {
                return Ok(Some(e.inner.data.payouts.iter().map(abi::payout_of).collect()));
            }
        }
        Ok(None)
    }
}

fn settle_call<'a>(
    channels: &'a Channels::ChannelsInstance<DynProvider>,
    voucher: &SignedVoucher,
    payouts: &[PayoutRun],
) -> SolCallBuilder<&'a DynProvider, Channels::settleCall> {
    channels.settle(abi::voucher(&voucher.voucher), Bytes::copy_from_slice(&voucher.signature.0), abi::payouts(payouts))
}

/// How long a sent transaction may take to be mined before it counts as failed.
const RECEIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

async fn send<D: CallDecoder>(
    call: &'static str,
    builder: CallBuilder<&DynProvider, D, Ethereum>,
) -> Result<TxOutcome> {
    Ok(send_receipt(call, builder).await?.0)
}

async fn send_receipt<D: CallDecoder>(
    call: &'static str,
    builder: CallBuilder<&DynProvider, D, Ethereum>,
) -> Result<(TxOutcome, TransactionReceipt)> {
    // The estimate is the least gas that succeeded against the state it was run on; a
    // margin keeps a transaction from running out on a slightly different execution path
    // (warm/cold storage, the 63/64 rule at calls), which mines as a bare failure.
    let estimate = builder.estimate_gas().await.map_err(reverted(call))?;
    let pending = builder.gas(estimate + estimate / 5).send().await.map_err(reverted(call))?;
    let receipt = pending
        // Never wait forever on a transaction the chain dropped.
        .with_timeout(Some(RECEIPT_TIMEOUT))
        .get_receipt()
        .await
        .map_err(|e| RpcError::Reverted { call, reason: format!("waiting for the receipt: {e}") })?;
    if !receipt.status() {
        return Err(RpcError::TxFailed { call, tx: receipt.transaction_hash }.into());
    }
    let out = TxOutcome {
        tx: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
        gas_used: receipt.gas_used,
    };
    tracing::debug!(target: "chain::client", call, gas = out.gas_used, block = out.block, "mined");
    Ok((out, receipt))
}
