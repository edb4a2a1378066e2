//! The registry's rules: owners alone update their models, and a bond cannot leave while
//! a settlement of its node can still be disputed.

use attrinet_market::{Price, Split, Wei, payout_runs};

use crate::util::{BOND, ETH, THAW, WINDOW, World, forge_receipts, reverted_with, tree_of, voucher};

#[tokio::test]
async fn only_the_owner_updates_a_model_and_splits_must_be_whole() {
    let w = World::new().await;
    let cheaper = Price { per_1k_input: Wei(1), per_1k_output: Wei(2) };
    let greedy = Split::new(10_000, 0, 0, 0).unwrap();
    reverted_with(w.node.chain.update_terms(w.model, cheaper, greedy).await.unwrap_err(), "Unauthorized");
    let t = w.node.chain.terms(w.model).await.unwrap().unwrap();
    assert_eq!((t.price, t.split), (w.price, w.split));

    w.owner.chain.update_terms(w.model, cheaper, greedy).await.unwrap();
    let t = w.node.chain.terms(w.model).await.unwrap().unwrap();
    assert_eq!((t.price, t.split, t.version), (cheaper, greedy, 1));
    // Every version stays, for the settlements made under it.
    let h = w.node.chain.terms_history(w.model).await.unwrap().unwrap();
    let got: Vec<_> = h.versions.iter().map(|v| (v.price, v.split)).collect();
    assert_eq!(got, vec![(w.price, w.split), (cheaper, greedy)]);
    assert!(h.versions[0].since <= h.versions[1].since);
    assert_eq!(h.grace, 3_600);
}

#[tokio::test]
async fn a_bond_stays_while_a_settlement_of_its_node_can_be_disputed() {
    let w = World::new().await;
    reverted_with(w.node.chain.withdraw_bond().await.unwrap_err(), "BondLocked");
    w.node.chain.request_unbond().await.unwrap();
    w.anvil.advance(THAW - 5).await.unwrap();

    // A settlement just before the unbonding delay ends...
    let (_, params) = w.open(Wei(10 * ETH)).await;
    let now = w.now().await;
    let receipts = forge_receipts(&w, &params, &[(w.model, w.price)], 1, Wei::ZERO, 3, now, |_, _| {});
    let tree = tree_of(&receipts);
    let last = receipts.last().unwrap().receipt.clone();
    let v = voucher(&w, &params, 3, last.cumulative, &tree);
    let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
    w.node.chain.settle(&v, &payout_runs(&plain, None, |_| Ok((0, w.split))).unwrap().0).await.unwrap();

    // ... keeps the bond slashable until its window ends, past the delay.
    w.anvil.advance(10).await.unwrap();
    reverted_with(w.node.chain.withdraw_bond().await.unwrap_err(), "BondLocked");
    w.anvil.advance(WINDOW).await.unwrap();
    let registry = w.deployment.registry;
    let before = w.node.chain.native_balance(registry).await.unwrap();
    w.node.chain.withdraw_bond().await.unwrap();
    let after = w.node.chain.native_balance(registry).await.unwrap();
    assert_eq!(before.0 - after.0, BOND.0);
    assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), Wei::ZERO);
}

/// Issue 14, attack 1: an owner who updates its terms twice within a challenge window must
/// not turn an honest node's pending settlement into "fraud". The node serves and settles
/// under the terms it was offered; the owner then updates prices and split twice; an honest
/// watcher examines the settlement and finds it honest, and at finalize everyone is paid by
/// the terms it was made under. Before terms were versioned, the watcher disputed it (as
/// `value`) and took the node's bond.
#[tokio::test]
async fn an_owner_updating_its_terms_twice_cannot_slash_an_honest_pending_settlement() {
    use std::sync::Arc;

    use attrinet_chain::{SettleAction, SettlementLoop, SettlementPolicy, StoreSource};
    use attrinet_market::Seq;

    use crate::util::Session;

    let w = World::new().await;
    let deposit = Wei(20 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    s.serve(&w, w.model, w.price, 5, now);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 0, max_gas_bps: 10_000 };
    let settler = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    let ticks = settler.tick().await.unwrap();
    assert!(matches!(ticks[0].1, Ok(SettleAction::Settled { seq: Seq(5), .. })), "{ticks:?}");

    // Two updates inside the window: neither the served prices nor the split survive.
    let (p1, s1) = (Price { per_1k_input: Wei(5), per_1k_output: Wei(7) }, Split::new(1, 9_999, 0, 0).unwrap());
    let (p2, s2) = (Price { per_1k_input: Wei(3), per_1k_output: Wei(11) }, Split::new(2, 9_998, 0, 0).unwrap());
    w.owner.chain.update_terms(w.model, p1, s1).await.unwrap();
    w.owner.chain.update_terms(w.model, p2, s2).await.unwrap();

    let mut watcher = crate::fraud::watcher(&w, Arc::new(StoreSource(s.node_store.clone())));
    let report = watcher.step().await.unwrap();
    assert!(report.disputed.is_empty(), "an honest settlement was disputed: {report:?}");
    assert_eq!(report.verified, vec![(id, Seq(5))], "{report:?}");
    assert_eq!(w.node.chain.bond(w.node.address()).await.unwrap(), BOND);

    // The window passes and the settlement pays everyone by the terms it was made under.
    w.anvil.advance(WINDOW + 1).await.unwrap();
    let ticks = settler.tick().await.unwrap();
    assert!(matches!(ticks[0].1, Ok(SettleAction::Finalized { seq: Seq(5) })), "{ticks:?}");
    let cumulative = w.node.chain.channel(id).await.unwrap().settled;
    let parts = w.split.apply(cumulative);
    assert_eq!(w.node.chain.credited(w.node.address()).await.unwrap(), parts.node);
    assert_eq!(w.node.chain.credited(w.owner.address()).await.unwrap(), parts.owner);
}

/// Issue 14, attack 12: a settlement made under terms with a data share finalizes after the
/// owner moved to terms without one and cleared the data pool (allowed: the terms in force
/// have no data share). The data share must not be credited to address(0), where nobody can
/// withdraw it: with no pool it goes to the owner, as a model without one always did.
#[tokio::test]
async fn a_data_share_finalized_after_the_pool_was_cleared_goes_to_the_owner_not_to_address_zero() {
    use alloy::primitives::{Address, B256};
    use attrinet_chain::{SettleAction, SettlementLoop, SettlementPolicy};
    use attrinet_market::Seq;

    use crate::util::Session;

    let w = World::new().await;
    let deposit = Wei(20 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    s.serve(&w, w.model, w.price, 4, w.now().await);
    let policy = SettlementPolicy { threshold: Wei(1), max_age_secs: 0, max_gas_bps: 10_000 };
    let settler = SettlementLoop::new(w.node.chain.clone(), s.node_store.clone(), policy);
    let settled = settler.settle_channel(id, true).await.unwrap();
    assert!(matches!(settled, SettleAction::Settled { seq: Seq(4), .. }), "{settled:?}");

    let no_data = Split::new(7_000, 3_000, 0, 0).unwrap();
    w.owner.chain.update_terms(w.model, w.price, no_data).await.unwrap();
    w.owner.chain.set_datanet(w.model, B256::ZERO, Address::ZERO).await.unwrap();
    w.anvil.advance(WINDOW + 1).await.unwrap();
    let ticks = settler.tick().await.unwrap();
    assert!(matches!(ticks[0].1, Ok(SettleAction::Finalized { seq: Seq(4) })), "{ticks:?}");

    let cumulative = w.node.chain.channel(id).await.unwrap().settled;
    let parts = w.split.apply(cumulative);
    assert!(parts.data > Wei::ZERO);
    assert_eq!(w.node.chain.credited(Address::ZERO).await.unwrap(), Wei::ZERO, "nothing credited to address(0)");
    assert_eq!(w.node.chain.credited(w.owner.address()).await.unwrap(), parts.owner.checked_add(parts.data).unwrap());
}
