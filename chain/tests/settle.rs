//! Settlement without disputes: the happy path, and vouchers `settle` must refuse.

use alloy::primitives::U256;
use attrinet_market::{EvmSignature, Seq, SignedVoucher, Voucher, Wei, payout_runs, payout_totals};

use crate::util::{ETH, Session, THAW, WINDOW, World, reverted_with};

#[tokio::test]
async fn open_200_receipts_settle_once_finalize_and_everyone_is_paid_exactly() {
    let w = World::new().await;
    let deposit = Wei(50 * ETH);
    let (id, params) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let now = w.now().await;
    let (receipts, voucher) = s.serve(&w, w.model, w.price, 200, now);
    let cumulative = voucher.voucher.cumulative;
    let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
    assert_eq!(cumulative, plain.iter().try_fold(Wei::ZERO, |a, r| a.checked_add(r.value)).unwrap());

    let payouts = payout_runs(&plain, None, |_| Ok((0, w.split))).unwrap().0;
    assert_eq!(payouts.len(), 1, "one model, one run");
    let settled = w.node.chain.settle(&voucher, &payouts).await.unwrap();
    let pending = w.node.chain.pending(id).await.unwrap().expect("pending after settle");
    assert_eq!((pending.seq, pending.cumulative), (Seq(200), cumulative));

    // Not before the window ends.
    let early = w.watcher.chain.finalize(id, &payouts).await.unwrap_err();
    reverted_with(early, "WindowOpen");
    w.anvil.advance(WINDOW + 1).await.unwrap();
    w.watcher.chain.finalize(id, &payouts).await.unwrap();

    let expected = payout_totals(&payouts).unwrap();
    assert_eq!(expected, w.split.apply(cumulative), "a single run is split as a whole");
    assert_eq!(expected.total().unwrap(), cumulative);
    let c = &w.watcher.chain;
    assert_eq!(c.credited(w.node.address()).await.unwrap(), expected.node);
    assert_eq!(c.credited(w.owner.address()).await.unwrap(), expected.owner);
    assert_eq!(c.credited(w.data_pool).await.unwrap(), expected.data);
    assert_eq!(c.credited(w.treasury).await.unwrap(), expected.protocol);
    let info = c.channel(id).await.unwrap();
    assert_eq!((info.settled, info.settled_seq), (cumulative, Seq(200)));
    assert!(c.pending(id).await.unwrap().is_none());

    // Pull payments: the owner's withdrawal moves exactly its credit out of the contract.
    let channels = w.deployment.channels;
    let before = c.native_balance(channels).await.unwrap();
    w.owner.chain.withdraw().await.unwrap();
    let after = c.native_balance(channels).await.unwrap();
    assert_eq!(before.0 - after.0, expected.owner.0);
    assert_eq!(c.credited(w.owner.address()).await.unwrap(), Wei::ZERO);

    // The payer thaws and gets back exactly what was not settled.
    w.payer.chain.thaw(id).await.unwrap();
    reverted_with(w.payer.chain.withdraw_deposit(id).await.unwrap_err(), "StillFrozen");
    w.anvil.advance(THAW + 1).await.unwrap();
    let before = c.native_balance(channels).await.unwrap();
    w.payer.chain.withdraw_deposit(id).await.unwrap();
    let after = c.native_balance(channels).await.unwrap();
    assert_eq!(before.0 - after.0, deposit.0 - cumulative.0);
    assert!(c.channel(id).await.unwrap().closed);
    println!("settle gas for 200 receipts: {}", settled.gas_used);
}

#[tokio::test]
async fn forged_and_replayed_voucher_signatures_are_rejected_at_settle() {
    let w = World::new().await;
    let deposit = Wei(10 * ETH);
    let (id, params) = w.open(deposit).await;
    let (id2, params2) = w.open(deposit).await;
    let mut s = Session::new(params, deposit);
    let mut s2 = Session::new(params2, deposit);
    let now = w.now().await;
    let (receipts, good) = s.serve(&w, w.model, w.price, 5, now);
    let (_, good2) = s2.serve(&w, w.model, w.price, 3, now);
    let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
    let payouts = payout_runs(&plain, None, |_| Ok((0, w.split))).unwrap().0;

    // Signed by someone other than the payer (the provider itself).
    let by_provider = good.voucher.clone().sign(&w.node.id.evm);
    reverted_with(w.node.chain.settle(&by_provider, &payouts).await.unwrap_err(), "BadSignature");

    // The payer's signature over a smaller cumulative, presented with a larger one.
    let inflated = SignedVoucher {
        voucher: Voucher { cumulative: Wei(good.voucher.cumulative.0 + 1), ..good.voucher.clone() },
        signature: good.signature,
    };
    reverted_with(w.node.chain.settle(&inflated, &payouts).await.unwrap_err(), "BadSignature");

    // The malleable twin (r, n - s, flipped v) of a valid signature.
    let mut twin = good.signature.0;
    let n = U256::from_str_radix("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16).unwrap();
    let s_value = U256::from_be_slice(&twin[32..64]);
    twin[32..64].copy_from_slice(&(n - s_value).to_be_bytes::<32>());
    twin[64] = if twin[64] == 27 { 28 } else { 27 };
    let malleated = SignedVoucher { voucher: good.voucher.clone(), signature: EvmSignature(twin) };
    reverted_with(w.node.chain.settle(&malleated, &payouts).await.unwrap_err(), "BadSignature");

    // Another channel's voucher (same payer, same provider) replayed onto this channel.
    let replayed =
        SignedVoucher { voucher: Voucher { channel: id, ..good2.voucher.clone() }, signature: good2.signature };
    let payouts2 = payout_runs(&plain[..3], None, |_| Ok((0, w.split))).unwrap().0;
    reverted_with(w.node.chain.settle(&replayed, &payouts2).await.unwrap_err(), "BadSignature");

    // The genuine voucher settles; presenting it again, pending or final, is refused.
    w.node.chain.settle(&good, &payouts).await.unwrap();
    reverted_with(w.node.chain.settle(&good, &payouts).await.unwrap_err(), "SettlementPending");
    w.anvil.advance(WINDOW + 1).await.unwrap();
    w.node.chain.finalize(id, &payouts).await.unwrap();
    reverted_with(w.node.chain.settle(&good, &payouts).await.unwrap_err(), "StaleVoucher");
    assert_eq!(w.node.chain.channel(id).await.unwrap().settled, good.voucher.cumulative);
    assert_eq!(w.node.chain.channel(id2).await.unwrap().settled, Wei::ZERO);
}
