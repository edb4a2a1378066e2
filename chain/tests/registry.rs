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
    assert_eq!((t.price, t.split), (cheaper, greedy));
    // The terms before the update stay valid for settlements still in their window.
    assert_eq!((t.previous_price, t.previous_split), (w.price, w.split));
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
    w.node.chain.settle(&v, &payout_runs(&plain, None, |_| Some(w.split)).unwrap().0).await.unwrap();

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
