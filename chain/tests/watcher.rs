//! The watcher across restarts, and on a payer's thaw.

use std::sync::Arc;

use attrinet_chain::{
    Batch, EventFollower, FileCheckpoint, MemCheckpoint, MemSource, SettlementLoop, SettlementPolicy, StoreSource,
    Watcher,
};
use attrinet_market::{MemStore, PayoutRun, Seq, Store, Wei, payout_totals};

use crate::util::{BOND, ETH, Session, THAW, WINDOW, World, forge_receipts, tree_of, voucher};

fn file_watcher(w: &World, path: &std::path::Path, source: Arc<MemSource>) -> Watcher<FileCheckpoint, MemStore> {
    let follower = EventFollower::new(
        w.watcher.chain.provider().clone(),
        w.deployment.channels,
        0,
        w.deployment.deploy_block,
        FileCheckpoint::new(path),
    )
    .unwrap();
    Watcher::new(w.watcher.chain.clone(), follower, source, None)
}

#[tokio::test]
async fn watcher_restarted_in_the_middle_of_a_window_still_disputes() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("watcher.checkpoint");
    let (id, params) = w.open(Wei(10 * ETH)).await;
    let now = w.now().await;
    let receipts = forge_receipts(&w, &params, &[(w.model, w.price)], 1, Wei::ZERO, 4, now, |i, r| {
        if i == 1 {
            r.value = Wei(r.value.0 * 2);
        }
    });
    let tree = tree_of(&receipts);
    let last = receipts.last().unwrap().receipt.clone();
    let v = voucher(&w, &params, 4, last.cumulative, &tree);
    let payouts = vec![PayoutRun::new(w.model, 4, w.split.apply(last.cumulative))];

    // The first watcher sees the settlement but cannot get its batch yet, then dies.
    let empty = Arc::new(MemSource::default());
    let mut first = file_watcher(&w, &checkpoint, empty);
    first.step().await.unwrap();
    w.node.chain.settle(&v, &payouts).await.unwrap();
    let deadline = w.node.chain.pending(id).await.unwrap().unwrap().deadline;
    let report = first.step().await.unwrap();
    assert!(report.disputed.is_empty() && report.verified.is_empty());
    drop(first);
    let saved = std::fs::read_to_string(&checkpoint).unwrap();

    // Half the window passes while no watcher runs.
    w.anvil.advance(WINDOW / 2).await.unwrap();
    assert!(w.now().await < deadline);

    // A restarted watcher, from the same checkpoint, now with the batch, disputes in time.
    let source = Arc::new(MemSource::default());
    source.publish(tree.root().hash, Batch { tree: Some(tree), ..Batch::new(receipts) });
    let mut second = file_watcher(&w, &checkpoint, source);
    let report = second.step().await.unwrap();
    assert_eq!(report.disputed.len(), 1, "{report:?} (checkpoint was {saved:?})");
    assert_eq!(report.disputed[0].1, "value");
    assert!(w.node.chain.pending(id).await.unwrap().is_none());
    // Half the bond: the rest is burned (Channels.DISPUTE_REWARD_BPS).
    assert_eq!(w.watcher.chain.credited(w.watcher.address()).await.unwrap(), Wei(BOND.0 / 2));

    // Its checkpoint moved past the settlement: a third start replays nothing to act on.
    let mut third = file_watcher(&w, &checkpoint, Arc::new(MemSource::default()));
    let report = third.step().await.unwrap();
    assert!(report.disputed.is_empty() && report.failed.is_empty(), "{report:?}");
}

#[tokio::test]
async fn payer_thaw_with_an_unsettled_voucher_gets_the_provider_paid() {
    let w = World::new().await;
    let deposit = Wei(20 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    let (_, voucher) = s.serve(&w, w.model, w.price, 30, now);
    let cumulative = voucher.voucher.cumulative;

    // The node's loop would not settle this yet (threshold and age far away)...
    let policy = SettlementPolicy { threshold: Wei(1_000 * ETH), max_age_secs: 86_400, max_gas_bps: 100 };
    let settler = Arc::new(SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy));
    let ticks = settler.tick().await.unwrap();
    assert!(matches!(ticks[0].1, Ok(attrinet_chain::SettleAction::BelowThreshold { .. })), "{ticks:?}");

    // ... but its watcher settles as soon as the payer thaws.
    let follower = EventFollower::new(
        w.node.chain.provider().clone(),
        w.deployment.channels,
        0,
        w.deployment.deploy_block,
        MemCheckpoint::default(),
    )
    .unwrap();
    let source = Arc::new(StoreSource(s.node_store.clone()));
    let mut watcher = Watcher::new(w.node.chain.clone(), follower, source, Some(settler.clone()));
    watcher.step().await.unwrap();
    w.payer.chain.thaw(id).await.unwrap();
    let report = watcher.step().await.unwrap();
    assert_eq!(report.settled_on_thaw, vec![(id, Seq(30))]);
    // The watcher checks its own settlement like any other.
    let report = watcher.step().await.unwrap();
    assert_eq!(report.verified, vec![(id, Seq(30))]);

    // The window passes; the watcher finalizes, within the thaw.
    w.anvil.advance(WINDOW + 1).await.unwrap();
    watcher.step().await.unwrap();
    let info = w.node.chain.channel(id).await.unwrap();
    assert_eq!((info.settled_seq, info.settled), (Seq(30), cumulative));
    assert_eq!(s.node_store.channel(&id).unwrap().unwrap().settled_seq, Seq(30), "store marked settled");

    // The payer withdraws what is left; the node was paid its share.
    w.anvil.advance(THAW).await.unwrap();
    let channels = w.deployment.channels;
    let before = w.payer.chain.native_balance(channels).await.unwrap();
    w.payer.chain.withdraw_deposit(id).await.unwrap();
    let after = w.payer.chain.native_balance(channels).await.unwrap();
    assert_eq!(before.0 - after.0, deposit.0 - cumulative.0);
    let expected = w.split.apply(cumulative);
    assert_eq!(w.node.chain.credited(w.node.address()).await.unwrap(), expected.node);
    assert_eq!(payout_totals(&[PayoutRun::new(w.model, 30, expected)]).unwrap().total().unwrap(), cumulative);
}
