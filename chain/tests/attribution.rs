//! Data rewards on anvil: a model with a datanet of two contributors, queries whose outputs
//! copy each differently; the node settles with per-contributor data entries, a watcher
//! verifies them (recomputing the weights from the outputs), and after finalize each
//! contributor claims exactly its computed total. Then every way of getting the entries
//! or the weights wrong is disputed by the watcher and voids the settlement.

use std::collections::BTreeMap;
use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use attrinet_chain::{
    Batch, ChainClient, ChainError, FraudProof, MemAttribution, MemCheckpoint, MemSource, RpcError, SettleAction,
    SettlementLoop, SettlementPolicy, StoreSource, SumPreimage, Watcher, WeightLeaf, weights_root,
};
use attrinet_market::{
    Admission, ChannelParams, CommittedData, DEFAULT_MIN_SPAN, Datanet, Delivered, Document, Identity, MemStore,
    MerkleTree, ModelId, PPM_WHOLE, PayoutError, PayoutRun, Price, Quote, Receipt, Seq, SignedReceipt, SignedVoucher,
    Split, Store, SumProof, SumTree, Usage, Wei, Weight, Weights, contributor_totals, payout_runs, ppm_of,
    receipt_data_share, request_hash, response_hash,
};

use crate::fraud::watcher;
use crate::util::{BOND, ETH, Session, WINDOW, World, forge_receipts, reverted_with, tree_of, voucher};

/// A whitespace tokenizer over a fixed vocabulary, standing in for the model's.
fn tokenize(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            w.bytes().fold(2_166_136_261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619)) >> 1
        })
        .collect()
}

const RIVERS: &str = "The Danube rises in the Black Forest of Germany and flows south east for nearly \
    three thousand kilometres through ten countries before it empties into the Black Sea through a wide \
    delta of reed beds and lagoons that shelters more than three hundred species of birds.";
const BREAD: &str = "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive \
    with regular feedings of flour and water; bakers keep it at room temperature and refresh it once a day \
    so that the bread rises slowly and tastes faintly sour.";

/// A contributor: an EVM key to claim with.
struct Contributor {
    id: Identity,
    chain: ChainClient,
}

async fn contributor(w: &World, seed: u8) -> Contributor {
    let id = Identity::from_secrets([seed; 32], [seed.wrapping_add(1); 32]).unwrap();
    w.anvil.fund(id.address(), U256::from(10 * ETH)).await.unwrap();
    let chain = ChainClient::connect(&w.anvil.endpoint(), id.evm.clone(), w.deployment).unwrap();
    Contributor { id, chain }
}

/// Serves `outputs` through both ledgers as a node and a client do, each receipt committing
/// to the datanet's weights for its output; the node keeps the weights and outputs.
fn serve_attributed(
    s: &mut Session,
    w: &World,
    (model, price): (ModelId, Price),
    outputs: &[Vec<u32>],
    attribute: impl Fn(&[u32]) -> Weights,
    attribution: &MemAttribution,
    now: u64,
) -> (Vec<SignedReceipt>, SignedVoucher) {
    let quote = Quote { model, price, max_input_tokens: 4_096, max_output_tokens: 1_024 };
    let mut out = Vec::new();
    let mut last = None;
    for (i, tokens) in outputs.iter().enumerate() {
        let weights = attribute(tokens);
        let request = format!("question {i}");
        let reservation = s.provider.reserve(quote, Admission::of(&quote)).unwrap();
        let usage = Usage {
            request_hash: request_hash(request.as_bytes()),
            response_hash: response_hash(tokens),
            input_tokens: 17 + i as u32,
            output_tokens: tokens.len() as u32,
            attribution_root: attribution.insert_weights(weights.clone()),
        };
        attribution.insert_output(tokens.clone());
        let (proposal, batch_start) = s.provider.propose(reservation, &usage, now, &w.node.id).unwrap();
        let delivered = Delivered {
            request_hash: usage.request_hash,
            response_hash: usage.response_hash,
            output_tokens: usage.output_tokens,
            input_tokens: None,
            weights: weights.clone(),
            expected_weights: None,
        };
        let (receipt, voucher) = s.payer.accept(proposal, batch_start, &quote, &delivered, now, &w.payer.id).unwrap();
        let stored = s.client_store.record_receipt(&receipt, &voucher).unwrap();
        s.payer.commit(&stored, &receipt);
        s.provider.check_cosigned(&receipt, &voucher).unwrap();
        let stored = s.node_store.record_receipt(&receipt, &voucher).unwrap();
        s.provider.commit(&stored, &receipt);
        out.push(receipt);
        last = Some(voucher);
    }
    (out, last.expect("at least one output"))
}

/// The rivers and bread contributors (keys from `seeds`) and their datanet.
async fn rivers_and_bread(w: &World, seeds: (u8, u8)) -> (Contributor, Contributor, Arc<Datanet>) {
    let (rivers, bread) = (contributor(w, seeds.0).await, contributor(w, seeds.1).await);
    let docs = [(rivers.id.address(), "rivers.txt", RIVERS), (bread.id.address(), "bread.txt", BREAD)]
        .map(|(owner, name, text)| Document { owner, name: name.into(), text: text.into() });
    let datanet = Arc::new(Datanet::from_texts(DEFAULT_MIN_SPAN, docs, tokenize).unwrap());
    (rivers, bread, datanet)
}

#[tokio::test]
async fn two_contributors_each_claim_exactly_their_computed_total() {
    let w = World::new().await;
    let (rivers, bread, datanet) = rivers_and_bread(&w, (0x61, 0x71)).await;
    let model = ModelId::from([0x33; 32]);
    let price = Price { per_1k_input: Wei(1_000_003_000_000_007), per_1k_output: Wei(4_000_011_000_000_013) };
    let split = Split::new(5_003, 1_999, 2_497, 501).unwrap();
    let pool = Address::repeat_byte(0x9d);
    w.owner.chain.register_model(model, price, split, datanet.root(), pool).await.unwrap();

    // Four answers: all rivers; bread with a little rivers; all bread; nothing of either.
    let outputs: Vec<Vec<u32>> = [
        "Well: the Danube rises in the Black Forest of Germany and flows south east for nearly three thousand kilometres.",
        "Keep a sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive, and recall the Black Sea through a wide delta of reed beds.",
        "Bakers keep it at room temperature and refresh it once a day so that the bread rises slowly and tastes faintly sour.",
        "The capital of France is Paris, and its river is the Seine.",
    ]
    .iter()
    .map(|t| tokenize(t))
    .collect();
    let attributions: Vec<Weights> = outputs.iter().map(|o| datanet.attribute(o).weights).collect();
    let (r, b) = (rivers.id.address(), bread.id.address());
    assert_eq!(attributions[0].ppm_of(&r), PPM_WHOLE);
    assert!(attributions[1].ppm_of(&b) > attributions[1].ppm_of(&r) && attributions[1].ppm_of(&r) > 0);
    assert_eq!(attributions[2].ppm_of(&b), PPM_WHOLE);
    assert!(attributions[3].is_empty());

    let deposit = Wei(10 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let attribution = Arc::new(MemAttribution::default());
    let now = w.now().await;
    let (receipts, voucher) =
        serve_attributed(&mut s, &w, (model, price), &outputs, |o| datanet.attribute(o).weights, &attribution, now);

    // What each contributor is owed, straight from docs/protocol.md: the run's data share
    // divided by value, each receipt's part divided by its weights, rounded down.
    let plain: Vec<Receipt> = receipts.iter().map(|r| r.receipt.clone()).collect();
    let run_value = voucher.voucher.cumulative;
    let run_data = split.apply(run_value).data;
    let owed = |c: &Address| -> u128 {
        plain
            .iter()
            .zip(&attributions)
            .map(|(rc, a)| ppm_of(receipt_data_share(rc.value, run_value, run_data), a.ppm_of(c)).0)
            .sum()
    };
    let (owed_rivers, owed_bread) = (owed(&r), owed(&b));
    assert!(owed_rivers > 0 && owed_bread > owed_rivers, "bread was copied most: {owed_bread} vs {owed_rivers}");

    // The node settles with its weights.
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: u16::MAX };
    let settler = Arc::new(
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy).with_attribution(attribution.clone()),
    );
    // Without the weights it refuses: settling without entries would be a provable fraud.
    let blind = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    assert!(matches!(
        blind.settle_channel(id, true).await,
        Err(ChainError::Payout(PayoutError::WeightsMismatch { seq: Seq(1) }))
    ));
    let settled = settler.settle_channel(id, true).await.unwrap();
    assert!(matches!(settled, SettleAction::Settled { seq: Seq(4), .. }), "{settled:?}");
    let payouts = w.node.chain.settled_payouts(id, Seq(4)).await.unwrap().unwrap();
    assert_eq!(payouts.len(), 1);
    let weights = payout_runs(&plain, Some(&attributions), |_| Ok((0, split))).unwrap();
    assert_eq!(payouts, weights.0, "the chain holds the honest runs");
    let data = weights.1;
    assert_eq!(contributor_totals(data.iter().flat_map(|d| &d.entries)).unwrap(), {
        let mut v = vec![(r, Wei(owed_rivers)), (b, Wei(owed_bread))];
        v.sort();
        v
    });
    assert_eq!(payouts[0].data.distributed, Wei(owed_rivers + owed_bread));

    // A watcher with the outputs and the datanet recomputes and agrees.
    let mut watcher = watcher_of(&w, &s, attribution.clone()).with_datanet(model, datanet.clone());
    let report = watcher.step().await.unwrap();
    assert_eq!(report.verified, vec![(id, Seq(4))], "{report:?}");
    assert!(report.disputed.is_empty() && report.misattributed.is_empty(), "{report:?}");

    // Nothing can be claimed before finalize.
    let claim_r = data[0].claim(&r).unwrap();
    reverted_with(rivers.chain.claim_data(id, Seq(4), &payouts, 0, &claim_r).await.unwrap_err(), "PayoutsMismatch");
    w.anvil.advance(WINDOW + 1).await.unwrap();
    assert_eq!(settler.settle_channel(id, false).await.unwrap(), SettleAction::Finalized { seq: Seq(4) });

    // The pool gets the data share's rest: the unattributed answer and the rounding dust.
    let c = &w.watcher.chain;
    let parts = payouts[0].parts;
    assert_eq!(c.credited(pool).await.unwrap(), Wei(parts.data.0 - owed_rivers - owed_bread));

    // Each contributor claims exactly its total; a second claim, or a claim of another's
    // entries, is refused.
    let claim_b = data[0].claim(&b).unwrap();
    assert_eq!((claim_r.amount, claim_b.amount), (Wei(owed_rivers), Wei(owed_bread)));
    reverted_with(bread.chain.claim_data(id, Seq(4), &payouts, 0, &claim_r).await.unwrap_err(), "NotYourEntries");
    rivers.chain.claim_data(id, Seq(4), &payouts, 0, &claim_r).await.unwrap();
    bread.chain.claim_data(id, Seq(4), &payouts, 0, &claim_b).await.unwrap();
    assert_eq!(c.credited(r).await.unwrap(), Wei(owed_rivers));
    assert_eq!(c.credited(b).await.unwrap(), Wei(owed_bread));
    assert!(c.data_claimed(id, Seq(4), 0, r).await.unwrap());
    reverted_with(rivers.chain.claim_data(id, Seq(4), &payouts, 0, &claim_r).await.unwrap_err(), "AlreadyClaimed");
    assert_eq!(c.claimed_data_by_model(b).await.unwrap(), BTreeMap::from([(model, Wei(owed_bread))]));

    // Every wei of the settlement went somewhere: node, owner, protocol, pool, contributors.
    let total = [w.node.address(), w.owner.address(), w.treasury, pool, r, b];
    let mut credited = 0u128;
    for a in total {
        credited += c.credited(a).await.unwrap().0;
    }
    assert_eq!(credited, run_value.0);

    // And the claim is real money: withdrawing moves it out of the contract.
    let before = c.native_balance(w.deployment.channels).await.unwrap();
    rivers.chain.withdraw().await.unwrap();
    let after = c.native_balance(w.deployment.channels).await.unwrap();
    assert_eq!(before.0 - after.0, owed_rivers);
}

#[tokio::test]
async fn weights_that_are_not_the_datanets_are_reported_not_disputed() {
    let w = World::new().await;
    let (_, bread, datanet) = rivers_and_bread(&w, (0x81, 0x91)).await;
    let model = ModelId::from([0x44; 32]);
    // Registered before its datanet was built, then given it.
    w.owner.chain.register_model(model, w.price, w.split, B256::ZERO, w.data_pool).await.unwrap();
    reverted_with(w.payer.chain.set_datanet(model, datanet.root(), w.data_pool).await.unwrap_err(), "Unauthorized");
    w.owner.chain.set_datanet(model, datanet.root(), w.data_pool).await.unwrap();
    assert_eq!(w.watcher.chain.datanet_root(model).await.unwrap(), Some(datanet.root()));
    let deposit = Wei(10 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let attribution = Arc::new(MemAttribution::default());
    let now = w.now().await;
    // The node credits the bread contributor for an answer that copies the rivers text.
    let output = tokenize("the Danube rises in the Black Forest of Germany and flows south east for nearly");
    let lie = Weights::new(vec![Weight { contributor: bread.id.address(), ppm: PPM_WHOLE }]).unwrap();
    serve_attributed(&mut s, &w, (model, w.price), &[output], |_| lie.clone(), &attribution, now);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: u16::MAX };
    let settler =
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy).with_attribution(attribution.clone());
    settler.settle_channel(id, true).await.unwrap();
    let mut watcher = watcher_of(&w, &s, attribution).with_datanet(model, datanet);
    let report = watcher.step().await.unwrap();
    // The entries follow the committed weights, so no dispute can show anything; the
    // recomputation shows the weights themselves are wrong.
    assert!(report.disputed.is_empty(), "{report:?}");
    assert_eq!(report.misattributed.len(), 1, "{report:?}");
    assert_eq!((report.misattributed[0].0, report.misattributed[0].1), (id, Seq(1)));
    assert!(report.misattributed[0].2.contains("the datanet gives"), "{report:?}");
}

/// Weights paid to an address that owns no contribution are provable on chain: the
/// datanet's commitment includes its owners in ascending order, and two neighbours in it
/// show the address is not there. The watcher proves it with its copy of the datanet; for a
/// model without a datanet it needs none. Disputing a true contributor's weight this way
/// fails.
#[tokio::test]
async fn weights_paid_outside_the_datanet_are_disputed() {
    let w = World::new().await;
    let (_, bread, datanet) = rivers_and_bread(&w, (0xa1, 0xb1)).await;
    let model = ModelId::from([0x55; 32]);
    w.owner.chain.register_model(model, w.price, w.split, datanet.root(), w.data_pool).await.unwrap();
    // Receipts are judged by a datanet only an hour (DATANET_GRACE) after it was set.
    w.anvil.advance(3_601).await.unwrap();
    let deposit = Wei(10 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let attribution = Arc::new(MemAttribution::default());
    let now = w.now().await;
    // An honest answer (bread's passage, bread's weight), then one whose data share the
    // node pays to itself.
    let outputs = [tokenize(BREAD), tokenize("something else entirely, said at some length to be paid for")];
    let outsider = w.node.address();
    assert!(datanet.outsider_proof(&outsider).is_some() && datanet.outsider_proof(&bread.id.address()).is_none());
    let lie = weights(&[(outsider, PPM_WHOLE)]);
    let (receipts, _) = serve_attributed(
        &mut s,
        &w,
        (model, w.price),
        &outputs,
        |o| if o == outputs[0].as_slice() { datanet.attribute(o).weights } else { lie.clone() },
        &attribution,
        now,
    );
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: u16::MAX };
    let settler =
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy).with_attribution(attribution.clone());
    assert!(matches!(settler.settle_channel(id, true).await.unwrap(), SettleAction::Settled { seq: Seq(2), .. }));

    // The honest weight cannot be shown outside: its address is a leaf of the owners tree,
    // so no neighbours bracket it (here: the proof for another address is refused).
    let honest = WeightLeaf::of(&datanet.attribute(&outputs[0]).weights);
    assert_eq!(honest[0].contributor, bread.id.address());
    let forged = FraudProof::Outsider {
        receipt: receipts[0].receipt.clone(),
        leaf_value: receipts[0].receipt.value,
        proof: tree_of(&receipts).proof_at(0, 0).unwrap(),
        weight: honest[0],
        weight_proof: MerkleTree::new(&honest.iter().map(WeightLeaf::digest).collect::<Vec<_>>()).proof(0).unwrap(),
        datanet: datanet.outsider_proof(&Address::repeat_byte(0x01)),
    };
    let err = w.watcher.chain.dispute(id, &forged).await.unwrap_err();
    match err {
        ChainError::Rpc(RpcError::Reverted { reason, .. }) => {
            assert!(reason.contains("NotFraud") || reason.contains("WrongPosition"), "{reason}")
        }
        other => panic!("expected a revert, got {other}"),
    }

    // The watcher holding the datanet proves the outsider and takes the node's bond.
    let bond = w.node.chain.bond(w.node.address()).await.unwrap();
    let mut watcher = watcher_of(&w, &s, attribution.clone()).with_datanet(model, datanet.clone());
    let report = watcher.step().await.unwrap();
    assert_eq!(
        report.disputed.iter().map(|(c, k, _)| (*c, *k)).collect::<Vec<_>>(),
        vec![(id, "outsider")],
        "{report:?}"
    );
    assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), Wei(0), "the bond of {bond} went to the watcher");
    assert!(w.watcher.chain.pending(id).await.unwrap().is_none(), "the settlement was voided");
}

/// A model registered without a datanet pays no weights: any weight of its receipts is an
/// outsider, provable without a datanet.
#[tokio::test]
async fn any_weight_of_a_model_without_a_datanet_is_disputed() {
    let w = World::new().await;
    let (model, price, _) = w.second_model().await;
    assert_eq!(w.watcher.chain.datanet_root(model).await.unwrap(), Some(B256::ZERO));
    let lie = weights(&[(Address::repeat_byte(0x42), PPM_WHOLE)]);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: u16::MAX };
    let deposit = Wei(10 * ETH);
    let attribution = Arc::new(MemAttribution::default());
    let settle = async |s: &mut Session, id| {
        let now = w.now().await;
        let receipts =
            serve_attributed(s, &w, (model, price), &[tokenize(RIVERS)], |_| lie.clone(), &attribution, now).0;
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy)
            .with_attribution(attribution.clone())
            .settle_channel(id, true)
            .await
            .unwrap();
        receipts
    };

    // Within the hour after the model's datanet was set (here: registered without one), a
    // receipt is not judged by it: a node may not have learnt of a change yet.
    let (early, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let receipts = settle(&mut s, early).await;
    let leaf = WeightLeaf::of(&lie)[0];
    let proof = FraudProof::Outsider {
        receipt: receipts[0].receipt.clone(),
        leaf_value: receipts[0].receipt.value,
        proof: tree_of(&receipts).proof_at(0, 0).unwrap(),
        weight: leaf,
        weight_proof: MerkleTree::new(&[leaf.digest()]).proof(0).unwrap(),
        datanet: None,
    };
    reverted_with(w.watcher.chain.dispute(early, &proof).await.unwrap_err(), "DatanetChanged");
    let report = watcher_of(&w, &s, attribution.clone()).step().await.unwrap();
    assert!(report.disputed.is_empty() && report.verified == vec![(early, Seq(1))], "{report:?}");

    // After it, any weight of its receipts is provably paid outside.
    w.anvil.advance(3_601).await.unwrap();
    let (late, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    serve_attributed(&mut s, &w, (model, price), &[tokenize(RIVERS)], |_| lie.clone(), &attribution, now);
    let node_loop =
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy).with_attribution(attribution.clone());
    assert!(matches!(node_loop.settle_channel(late, true).await.unwrap(), SettleAction::Settled { seq: Seq(1), .. }));
    let report = watcher_of(&w, &s, attribution.clone()).step().await.unwrap();
    assert_eq!(
        report.disputed.iter().map(|(c, k, _)| (*c, *k)).collect::<Vec<_>>(),
        vec![(late, "outsider")],
        "{report:?}"
    );
    // The node does not send the voided settlement again (it would be disputed again, and
    // the node re-bonded for nothing), not even after a restart: a fresh loop reads it
    // from the chain.
    w.node.chain.add_bond(BOND).await.unwrap();
    assert_eq!(node_loop.settle_channel(late, true).await.unwrap(), SettleAction::Voided { seq: Seq(1) });
    let restarted =
        SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy).with_attribution(attribution.clone());
    assert_eq!(restarted.settle_channel(late, true).await.unwrap(), SettleAction::Voided { seq: Seq(1) });
    assert!(w.node.chain.pending(late).await.unwrap().is_none());
}

/// A watcher over the node's store and `attribution`, from the deployment's first block.
fn watcher_of(w: &World, s: &Session, attribution: Arc<MemAttribution>) -> Watcher<MemCheckpoint, MemStore> {
    watcher(w, Arc::new(StoreSource(s.node_store.clone()))).with_attribution(attribution)
}

/// A settlement whose data entries or weights are wrong in the way `kind` names.
pub(crate) struct BadData {
    pub(crate) voucher: SignedVoucher,
    pub(crate) payouts: Vec<PayoutRun>,
    pub(crate) batch: Batch,
}

fn weights(parts: &[(Address, u32)]) -> Weights {
    Weights::new(parts.iter().map(|&(contributor, ppm)| Weight { contributor, ppm }).collect()).unwrap()
}

/// Six receipts with varied weights (one without), settled by a provider who gets its data
/// entries wrong as `kind` says.
pub(crate) async fn bad_data_case(w: &World, params: &ChannelParams, kind: &str) -> BadData {
    let now = w.now().await;
    // "outsider": honest entries, but the model has no datanet, so no weight may be paid.
    let (model, price, split) = if kind == "outsider" { w.second_model().await } else { (w.model, w.price, w.split) };
    let now = if kind == "outsider" {
        // Judged only an hour (DATANET_GRACE) after the model's datanet (none) was set.
        w.anvil.advance(3_601).await.unwrap();
        w.now().await
    } else {
        now
    };
    let (c1, c2, c3) = (Address::repeat_byte(0xc1), Address::repeat_byte(0xc2), Address::repeat_byte(0xc3));
    let ws = vec![
        weights(&[(c1, 600_000), (c2, 400_000)]),
        weights(&[(c2, PPM_WHOLE)]),
        Weights::none(),
        weights(&[(c1, 250_000), (c2, 250_000), (c3, 500_000)]),
        weights(&[(c1, PPM_WHOLE)]),
        weights(&[(c3, PPM_WHOLE)]),
    ];
    let mut leaves: Vec<Vec<WeightLeaf>> = ws.iter().map(WeightLeaf::of).collect();
    if kind == "weights" {
        // A receipt whose weights fall one ppm short of a whole.
        leaves[1] = vec![WeightLeaf { contributor: c2, ppm: PPM_WHOLE - 1, count: 1 }];
    }
    let receipts = forge_receipts(w, params, &[(model, price)], 1, Wei::ZERO, 6, now, |i, r| {
        r.attribution_root = weights_root(&leaves[i]);
    });
    let plain: Vec<Receipt> = receipts.iter().map(|r| r.receipt.clone()).collect();
    let (mut payouts, mut committed) = if kind == "weights" {
        let total = receipts.last().unwrap().receipt.cumulative;
        (vec![PayoutRun::new(model, 6, split.apply(total))], CommittedData::honest(Vec::new()).unwrap())
    } else {
        let (p, mut d) = payout_runs(&plain, Some(&ws), |_| Ok((0, split))).unwrap();
        (p, d.remove(0))
    };
    let mut entries = committed.entries.clone();
    let find = |entries: &[attrinet_market::DataEntry], c: Address, leaf: u64| {
        entries.iter().position(|e| e.contributor == c && e.leaf == leaf).unwrap()
    };
    match kind {
        "honest" | "weights" | "outsider" => {}
        // c2's part of receipt 0 moved to c1: the same total, the wrong people.
        "data-entry" => {
            let (a, b) = (find(&entries, c1, 0), find(&entries, c2, 0));
            entries[a].amount.0 += 1_000;
            entries[b].amount.0 -= 1_000;
            committed = CommittedData::honest(entries).unwrap();
        }
        // c2's whole part of receipt 1 left out (its share goes to the pool instead).
        "data-missing" => {
            entries.remove(find(&entries, c2, 1));
            committed = CommittedData::honest(entries).unwrap();
        }
        // c1's first two entries in the wrong order: its claim range would break.
        "data-order" => {
            entries.swap(0, 1);
            committed = CommittedData::honest(entries).unwrap();
        }
        // A node above two entries records 7 wei more than they hold, and the run
        // distributes the inflated total.
        "data-sum" => {
            let leaves: Vec<_> = entries.iter().map(|e| (e.digest(), e.amount)).collect();
            let inflated = Wei(leaves[0].1.0 + leaves[1].1.0 + 7);
            committed.tree = SumTree::with_recorded_sum(&leaves, 1, 0, inflated).unwrap();
        }
        // The run claims to distribute one wei more than its entries hold.
        "data-total" => {}
        // The run declares one entry more than its tree holds.
        "data-shape" => {}
        other => panic!("no such data fraud {other}"),
    }
    if kind != "weights" {
        payouts[0].data = committed.commitment();
    }
    match kind {
        "data-total" => payouts[0].data.distributed.0 += 1,
        "data-shape" => payouts[0].data.entries += 1,
        _ => {}
    }
    let tree = tree_of(&receipts);
    let last = receipts.last().unwrap().receipt.clone();
    let v = voucher(w, params, last.seq.0, last.cumulative, &tree);
    let mut data = BTreeMap::new();
    if !committed.entries.is_empty() {
        data.insert(committed.tree.root().hash, committed);
    }
    BadData { voucher: v, payouts, batch: Batch { receipts, tree: Some(tree), weights: Some(leaves), data } }
}

#[tokio::test]
async fn wrong_totals_and_wrong_weights_are_disputed() {
    let w = World::new().await;
    for (case, kind) in [
        ("data-entry", "data-entry"),
        ("data-missing", "data-missing"),
        ("data-order", "data-order"),
        ("data-sum", "data-node"),
        ("data-total", "data-node"),
        ("data-shape", "data-node"),
        ("weights", "weights"),
    ] {
        let (id, params) = w.open(Wei(10 * ETH)).await;
        let bad = bad_data_case(&w, &params, case).await;
        let source = Arc::new(MemSource::default());
        source.publish(bad.voucher.voucher.receipts_root, bad.batch.clone());
        let mut watcher = watcher(&w, source);
        let credit = w.watcher.chain.credited(w.watcher.address()).await.unwrap();
        w.node.chain.settle(&bad.voucher, &bad.payouts).await.unwrap();
        let report = watcher.step().await.unwrap();
        assert_eq!(report.disputed.len(), 1, "{case}: {report:?}");
        assert_eq!(report.disputed[0].1, kind, "{case}");
        assert!(w.node.chain.pending(id).await.unwrap().is_none(), "{case}: the settlement is void");
        assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), Wei::ZERO, "{case}: bond slashed");
        let gained = w.watcher.chain.credited(w.watcher.address()).await.unwrap().0 - credit.0;
        assert_eq!(gained, BOND.0 / 2, "{case}: half the bond went to the disputer, the rest was burned");
        w.node.chain.add_bond(BOND).await.unwrap();
    }
}

#[tokio::test]
async fn honest_data_entries_are_not_disputable() {
    // The honest settlement of the same six receipts: the watcher verifies it, and each
    // data dispute, fed honest evidence, reverts with NotFraud: nobody can slash an honest
    // provider with them.
    let w = World::new().await;
    let (id, params) = w.open(Wei(10 * ETH)).await;
    let honest = bad_data_case(&w, &params, "honest").await;
    let source = Arc::new(MemSource::default());
    source.publish(honest.voucher.voucher.receipts_root, honest.batch.clone());
    let mut watcher = watcher(&w, source);
    w.node.chain.settle(&honest.voucher, &honest.payouts).await.unwrap();
    let report = watcher.step().await.unwrap();
    assert_eq!(report.verified, vec![(id, Seq(6))], "{report:?}");

    let batch = &honest.batch;
    let committed = batch.data.values().next().unwrap();
    let tree = &committed.tree;
    let receipts_tree = batch.tree.as_ref().unwrap();
    let weight_proof = |i: usize, j: usize| {
        let leaves = &batch.weights.as_ref().unwrap()[i];
        let digests: Vec<B256> = leaves.iter().map(WeightLeaf::digest).collect();
        (leaves[j], MerkleTree::new(&digests).proof(j).unwrap())
    };
    let payouts = honest.payouts.clone();
    let (e0, e1) = (committed.entries[0], committed.entries[1]);
    let i = e0.leaf as usize;
    let (weight, wp) = weight_proof(i, e0.weight_index as usize);
    let levels = tree.levels();
    let top = levels.len() - 1;
    let proofs = [
        FraudProof::DataOrder {
            payouts: payouts.clone(),
            run: 0,
            a: e0,
            a_proof: tree.proof_at(0, 0).unwrap(),
            b: e1,
            b_proof: tree.proof_at(0, 1).unwrap(),
        },
        FraudProof::DataEntry {
            payouts: payouts.clone(),
            run: 0,
            entry: e0,
            entry_proof: tree.proof_at(0, 0).unwrap(),
            receipt: batch.receipts[i].receipt.clone(),
            leaf_value: batch.receipts[i].receipt.value,
            receipt_proof: receipts_tree.proof_at(0, i).unwrap(),
            weight,
            weight_proof: wp.clone(),
        },
        // e0's own weight, claimed missing just before e0.
        FraudProof::DataMissing {
            payouts: payouts.clone(),
            run: 0,
            receipt: batch.receipts[i].receipt.clone(),
            leaf_value: batch.receipts[i].receipt.value,
            receipt_proof: receipts_tree.proof_at(0, i).unwrap(),
            weight,
            weight_proof: wp,
            gap: 0,
            below: None,
            above: Some((e0, tree.proof_at(0, 0).unwrap())),
        },
        FraudProof::DataNode {
            payouts: payouts.clone(),
            run: 0,
            level: top as u64,
            node: SumPreimage::Inner { left: levels[top - 1][0], right: levels[top - 1][1] },
            recorded: Wei::ZERO,
            proof: SumProof { index: 0, leaf_count: 1, siblings: Vec::new() },
        },
        FraudProof::DataNode {
            payouts: payouts.clone(),
            run: 0,
            level: 0,
            node: SumPreimage::Leaf { digest: e1.digest(), value: e1.amount },
            recorded: e1.amount,
            proof: tree.proof_at(0, 1).unwrap(),
        },
        FraudProof::Weights {
            receipt: batch.receipts[3].receipt.clone(),
            leaf_value: batch.receipts[3].receipt.value,
            proof: receipts_tree.proof_at(0, 3).unwrap(),
            weights: batch.weights.as_ref().unwrap()[3].clone(),
        },
    ];
    for p in &proofs {
        reverted_with(w.watcher.chain.dispute(id, p).await.unwrap_err(), "NotFraud");
    }
    assert!(w.node.chain.pending(id).await.unwrap().is_some(), "still pending");
    assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), BOND);
}
