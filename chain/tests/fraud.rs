//! Each fraud class: a dishonest provider (colluding with its payer where the receipts
//! themselves are bad) settles; the watcher finds it, disputes within the window, the
//! settlement is voided, the provider's bond goes to the watcher, and an honest
//! settlement of the same channel afterwards goes through.

use std::sync::Arc;

use attrinet_chain::{Batch, EventFollower, MemCheckpoint, MemSource, Watcher};
use attrinet_market::{
    ChannelParams, MemStore, ModelId, PayoutError, PayoutRun, Seq, SignedReceipt, SignedVoucher, Split, SumTree, Wei,
    payout_runs, payout_totals,
};

use crate::util::{BOND, ETH, WINDOW, World, forge_receipts, leaves, tree_of, voucher};

pub(crate) fn watcher(w: &World, source: Arc<dyn attrinet_chain::ReceiptSource>) -> Watcher<MemCheckpoint, MemStore> {
    let follower = EventFollower::new(
        w.watcher.chain.provider().clone(),
        w.deployment.channels,
        0,
        w.deployment.deploy_block,
        MemCheckpoint::default(),
    )
    .unwrap();
    Watcher::new(w.watcher.chain.clone(), follower, source, None)
}

pub(crate) struct Bad {
    pub(crate) receipts: Vec<SignedReceipt>,
    pub(crate) tree: SumTree,
    pub(crate) voucher: SignedVoucher,
    pub(crate) payouts: Vec<PayoutRun>,
    /// The channel's settled seq and cumulative before the bad settlement.
    pub(crate) settled_seq: u64,
    pub(crate) settled: Wei,
}

fn honest_payouts(receipts: &[SignedReceipt], models: &[(ModelId, Split)]) -> Vec<PayoutRun> {
    let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
    payout_runs(&plain, None, |r| {
        models.iter().find(|(id, _)| *id == r.model).map(|(_, s)| (0, *s)).ok_or(PayoutError::UnknownModel(r.model))
    })
    .unwrap()
    .0
}

/// Settles a bad batch of class `kind`, lets the watcher dispute it, checks the dispute's
/// effects, then settles an honest batch after it and finalizes it.
async fn disputed_then_honest(w: &World, params: &ChannelParams, case: &str, kind: &str) {
    let bad = bad_case(w, params, case).await;
    let (settled_seq, settled) = (bad.settled_seq, bad.settled);
    let id = params.id;
    let source = Arc::new(MemSource::default());
    source.publish(bad.tree.root().hash, Batch { tree: Some(bad.tree.clone()), ..Batch::new(bad.receipts.clone()) });
    let mut watcher = watcher(w, source.clone());
    let watcher_credit = w.watcher.chain.credited(w.watcher.address()).await.unwrap();

    w.node.chain.settle(&bad.voucher, &bad.payouts).await.unwrap();
    let deadline = w.node.chain.pending(id).await.unwrap().unwrap().deadline;

    let report = watcher.step().await.unwrap();
    assert_eq!(report.disputed.len(), 1, "one dispute expected: {report:?}");
    assert_eq!(report.disputed[0].1, kind);
    assert!(w.now().await < deadline, "disputed within the window");
    assert!(w.node.chain.pending(id).await.unwrap().is_none(), "the settlement is void");
    assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), Wei::ZERO, "bond slashed");
    let credit = w.watcher.chain.credited(w.watcher.address()).await.unwrap();
    assert_eq!(credit.0 - watcher_credit.0, BOND.0 / 2, "half the bond went to the disputer, the rest was burned");
    let info = w.node.chain.channel(id).await.unwrap();
    assert_eq!((info.settled_seq, info.settled), (Seq(settled_seq), settled), "channel as before");

    // Without a bond the provider cannot settle; re-bonded it settles honestly.
    w.node.chain.add_bond(BOND).await.unwrap();
    let now = w.now().await;
    let honest = forge_receipts(w, params, &[(w.model, w.price)], settled_seq + 1, settled, 5, now, |_, _| {});
    let tree = tree_of(&honest);
    let last = honest.last().unwrap().receipt.clone();
    let v = voucher(w, params, last.seq.0, last.cumulative, &tree);
    let payouts = honest_payouts(&honest, &[(w.model, w.split)]);
    source.publish(tree.root().hash, Batch::new(honest));
    w.node.chain.settle(&v, &payouts).await.unwrap();
    let report = watcher.step().await.unwrap();
    assert!(report.disputed.is_empty(), "honest batch disputed: {report:?}");
    assert_eq!(report.verified, vec![(id, last.seq)]);
    w.anvil.advance(WINDOW + 1).await.unwrap();
    w.node.chain.finalize(id, &payouts).await.unwrap();
    let info = w.node.chain.channel(id).await.unwrap();
    assert_eq!((info.settled_seq, info.settled), (last.seq, last.cumulative));
    let owner_share = payout_totals(&payouts).unwrap().owner;
    assert!(w.node.chain.credited(w.owner.address()).await.unwrap() >= owner_share);
}

/// A fraudulent settlement of class `kind` on the channel, ready to submit (for "seq-start"
/// an honest settlement is made and finalized first).
pub(crate) async fn bad_case(w: &World, params: &ChannelParams, kind: &str) -> Bad {
    let now = w.now().await;
    let one = [(w.model, w.price)];
    let simple = |receipts: Vec<SignedReceipt>, payouts: Option<Vec<PayoutRun>>| {
        let tree = tree_of(&receipts);
        let last = receipts.last().unwrap().receipt.clone();
        let v = voucher(w, params, last.seq.0, last.cumulative, &tree);
        let payouts = payouts.unwrap_or_else(|| honest_payouts(&receipts, &[(w.model, w.split)]));
        Bad { receipts, tree, voucher: v, payouts, settled_seq: 0, settled: Wei::ZERO }
    };
    match kind {
        // Receipt 3 replays seq 2.
        "seq" => simple(
            forge_receipts(w, params, &one, 1, Wei::ZERO, 6, now, |i, r| {
                if i == 2 {
                    r.seq = Seq(2);
                }
            }),
            None,
        ),
        // After an honest settlement of 1..=4, a voucher whose root covers 1..=8 again
        // (batch start declared as 0, not 4).
        "seq-start" => {
            let all = forge_receipts(w, params, &one, 1, Wei::ZERO, 8, now, |_, _| {});
            let first = simple(all[..4].to_vec(), None);
            w.node.chain.settle(&first.voucher, &first.payouts).await.unwrap();
            w.anvil.advance(WINDOW + 1).await.unwrap();
            w.node.chain.finalize(params.id, &first.payouts).await.unwrap();
            let settled = cumulative_of(&all[..4]);
            let tree = tree_of(&all);
            let v = voucher(w, params, 8, cumulative_of(&all), &tree);
            let amount = Wei(cumulative_of(&all).0 - settled.0);
            let payouts = vec![PayoutRun::new(w.model, 4, w.split.apply(amount))];
            Bad { receipts: all, tree, voucher: v, payouts, settled_seq: 4, settled }
        }
        // Receipt 4 charges 1,000 wei more than its tokens at the registered price.
        "value" => simple(
            forge_receipts(w, params, &one, 1, Wei::ZERO, 6, now, |i, r| {
                if i == 3 {
                    r.value = Wei(r.value.0 + 1_000);
                }
            }),
            None,
        ),
        // One wei moved from the owner to the node: same total, wrong split.
        "split" => {
            let receipts = forge_receipts(w, params, &one, 1, Wei::ZERO, 6, now, |_, _| {});
            let mut payouts = honest_payouts(&receipts, &[(w.model, w.split)]);
            payouts[0].parts.owner.0 -= 1;
            payouts[0].parts.node.0 += 1;
            simple(receipts, Some(payouts))
        }
        // Node 0 of level 1 records 7 wei more than its two leaves; the voucher claims the
        // inflated total, so the root's sum matches the amount and only that node lies.
        "sum" => {
            let receipts = forge_receipts(w, params, &one, 1, Wei::ZERO, 6, now, |_, _| {});
            let honest = leaves(&receipts);
            let inflated = Wei(honest[0].1.0 + honest[1].1.0 + 7);
            let tree = SumTree::with_recorded_sum(&honest, 1, 0, inflated).unwrap();
            let cumulative = Wei(cumulative_of(&receipts).0 + 7);
            assert_eq!(tree.root().sum, cumulative);
            let v = voucher(w, params, 6, cumulative, &tree);
            let payouts = vec![PayoutRun::new(w.model, 6, w.split.apply(cumulative))];
            Bad { receipts, tree, voucher: v, payouts, settled_seq: 0, settled: Wei::ZERO }
        }
        // Four receipts of model A, then four of B. "attribution": run A claims five (the
        // fifth is B's); "run-sum": value shifted from run B to run A. Each run is a
        // correct split of its declared value, so only the named check fails.
        "attribution" | "run-sum" => {
            let (model_b, price_b, split_b) = w.second_model().await;
            let receipts =
                forge_receipts(w, params, &[(w.model, w.price), (model_b, price_b)], 1, Wei::ZERO, 8, now, |_, _| {});
            assert_eq!(receipts[4].receipt.model, model_b);
            let (a_leaves, shift) = if kind == "attribution" { (5, 0) } else { (4, 1_000_000) };
            let a = Wei(sum_values(&receipts[..a_leaves]).0 + shift);
            let b = Wei(sum_values(&receipts[a_leaves..]).0 - shift);
            let payouts = vec![
                PayoutRun::new(w.model, a_leaves as u64, w.split.apply(a)),
                PayoutRun::new(model_b, 8 - a_leaves as u64, split_b.apply(b)),
            ];
            simple(receipts, Some(payouts))
        }
        other => panic!("no such fraud class {other}"),
    }
}

fn cumulative_of(receipts: &[SignedReceipt]) -> Wei {
    receipts.last().unwrap().receipt.cumulative
}

fn sum_values(receipts: &[SignedReceipt]) -> Wei {
    Wei(receipts.iter().map(|r| r.receipt.value.0).sum())
}

async fn case(kind: &str, expected: &str) {
    let w = World::new().await;
    let (_, params) = w.open(Wei(10 * ETH)).await;
    disputed_then_honest(&w, &params, kind, expected).await;
}

#[tokio::test]
async fn replayed_seq_is_disputed() {
    case("seq", "seq").await;
}

#[tokio::test]
async fn batch_reaching_below_the_settled_seq_is_disputed() {
    case("seq-start", "seq").await;
}

#[tokio::test]
async fn value_not_tokens_times_price_is_disputed() {
    case("value", "value").await;
}

#[tokio::test]
async fn payouts_off_the_registered_split_are_disputed() {
    case("split", "split").await;
}

#[tokio::test]
async fn merkle_sum_node_that_does_not_add_up_is_disputed() {
    case("sum", "sum").await;
}

#[tokio::test]
async fn receipt_of_another_model_inside_a_run_is_disputed() {
    case("attribution", "attribution").await;
}

#[tokio::test]
async fn run_whose_value_is_not_its_receipts_is_disputed() {
    case("run-sum", "run-sum").await;
}
