//! The node's settlement loop: threshold, age, gas, retries, and never two at once.

use attrinet_chain::{SettleAction, SettlementLoop, SettlementPolicy};
use attrinet_market::{Seq, Store, Wei};

use crate::util::{ETH, Session, WINDOW, World};

fn only(actions: Vec<(attrinet_market::ChannelId, attrinet_chain::Result<SettleAction>)>) -> SettleAction {
    assert_eq!(actions.len(), 1, "{actions:?}");
    actions.into_iter().next().unwrap().1.unwrap()
}

#[tokio::test]
async fn settles_past_threshold_when_gas_is_worth_it_and_never_twice() {
    let w = World::new().await;
    let deposit = Wei(100 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    let gas_price = w.node.chain.gas_price().await.unwrap();
    let (_, first) = s.serve(&w, w.model, w.price, 3, now);
    let small = first.voucher.cumulative;

    // Below the threshold and young: nothing.
    let policy = SettlementPolicy { threshold: Wei(small.0 * 2), max_age_secs: 3_600, max_gas_bps: 100 };
    let node_loop = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    assert_eq!(only(node_loop.tick().await.unwrap()), SettleAction::BelowThreshold { unsettled: small });

    // Past the threshold, but gas would cost more than the policy's fraction: nothing.
    // (0 bps: any gas at all is too much, whatever anvil's base fee has decayed to.)
    assert!(gas_price > Wei::ZERO);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: 0 };
    let stingy = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    match only(stingy.tick().await.unwrap()) {
        SettleAction::NotWorthIt { value, gas_cost } => assert!(value == small && gas_cost > Wei::ZERO),
        other => panic!("expected NotWorthIt, got {other:?}"),
    }
    assert!(w.node.chain.pending(id).await.unwrap().is_none());

    // Enough value: it settles.
    let (_, latest) = s.serve(&w, w.model, w.price, 60, now);
    let generous = SettlementLoop::new(
        w.node.chain.clone(),
        s.node_store.clone(),
        SettlementPolicy { threshold: Wei(1), max_age_secs: 3_600, max_gas_bps: 10_000 },
    );
    match only(generous.tick().await.unwrap()) {
        SettleAction::Settled { seq, amount, .. } => {
            assert_eq!(seq, Seq(63));
            assert_eq!(amount, latest.voucher.cumulative);
        }
        other => panic!("expected a settlement, got {other:?}"),
    }
    // The store records the settlement as soon as it is submitted, so that the next
    // vouchers commit to the batch after it; the provider takes the stored state in before
    // each proposal, as here.
    let state = s.node_store.channel(&id).unwrap().unwrap();
    assert_eq!(state.settled_seq, Seq(63));
    s.provider.settled(&state);
    // More receipts arrive, but one settlement is pending: no second one.
    s.serve(&w, w.model, w.price, 2, now);
    assert!(matches!(only(generous.tick().await.unwrap()), SettleAction::Pending { .. }));
    // After the window it finalizes; the receipts served while it was pending carry
    // vouchers over (63, 65] and settle next, with those served after.
    w.anvil.advance(WINDOW + 1).await.unwrap();
    assert_eq!(only(generous.tick().await.unwrap()), SettleAction::Finalized { seq: Seq(63) });
    let info = w.node.chain.channel(id).await.unwrap();
    assert_eq!(info.settled, latest.voucher.cumulative);
    s.serve(&w, w.model, w.price, 30, now);
    match only(generous.tick().await.unwrap()) {
        SettleAction::Settled { seq, amount, .. } => {
            assert_eq!(seq, Seq(95));
            let state = s.node_store.channel(&id).unwrap().unwrap();
            assert_eq!(amount, Wei(state.cumulative.0 - latest.voucher.cumulative.0));
        }
        other => panic!("expected the second settlement, got {other:?}"),
    }
}

#[tokio::test]
async fn settles_old_receipts_below_the_threshold() {
    let w = World::new().await;
    let deposit = Wei(10 * ETH);
    let (_, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    s.serve(&w, w.model, w.price, 10, now);
    // Gas is not what this test is about: any cost up to 6.5 times the value is accepted.
    let policy = SettlementPolicy { threshold: Wei(1_000 * ETH), max_age_secs: 600, max_gas_bps: u16::MAX };
    let node_loop = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    assert!(matches!(only(node_loop.tick().await.unwrap()), SettleAction::BelowThreshold { .. }));
    w.anvil.advance(601).await.unwrap();
    match only(node_loop.tick().await.unwrap()) {
        SettleAction::Settled { seq, .. } => assert_eq!(seq, Seq(10)),
        other => panic!("expected a settlement, got {other:?}"),
    }
}

/// Issue 14, attack 6 (the node's side): while the payer thaws, the pass that finalizes a
/// settlement also settles the newest voucher. Anyone may finalize, so a payer can finalize
/// and withdraw in one transaction once the thaw and the window are over: a node that
/// finalized in one pass and settled in the next left that gap open.
#[tokio::test]
async fn while_the_payer_thaws_one_pass_finalizes_and_settles_the_newest_voucher() {
    let w = World::new().await;
    let deposit = Wei(100 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    s.serve(&w, w.model, w.price, 3, now);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 0, max_gas_bps: 10_000 };
    let node_loop = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    assert!(matches!(node_loop.settle_channel(id, true).await.unwrap(), SettleAction::Settled { seq: Seq(3), .. }));
    let state = s.node_store.channel(&id).unwrap().unwrap();
    s.provider.settled(&state);
    let (_, newest) = s.serve(&w, w.model, w.price, 2, now);
    w.payer.chain.thaw(id).await.unwrap();
    w.anvil.advance(WINDOW + 1).await.unwrap();

    match only(node_loop.tick().await.unwrap()) {
        SettleAction::Settled { seq, .. } => assert_eq!(seq, Seq(5)),
        other => panic!("finalized without settling the newest voucher in the same pass: {other:?}"),
    }
    let info = w.node.chain.channel(id).await.unwrap();
    assert_eq!(info.settled_seq, Seq(3), "the first settlement is final");
    let pending = w.node.chain.pending(id).await.unwrap().expect("the newest voucher is pending");
    assert_eq!((pending.seq, pending.cumulative), (Seq(5), newest.voucher.cumulative));
}
