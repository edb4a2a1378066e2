//! The sled store keeps the `Store` contract across reopen, and refuses what the rules
//! refuse without changing anything.

use attrinet_market::{Seq, Store, StoreError, Wei};
use attrinet_node::{SledStore, audit};
use attrinet_tests::{Driver, test_channel};

#[test]
fn survives_reopen_and_refuses_replays() {
    let dir = tempfile::tempdir().unwrap();
    let receipts = {
        let store = SledStore::open(dir.path()).unwrap();
        let mut driver = Driver::resume(&store).unwrap();
        (0..20).map(|_| driver.round(&store, 1).unwrap()).collect::<Vec<_>>()
    };
    let store = SledStore::open(dir.path()).unwrap();
    let id = test_channel(Wei(0)).params.id;
    let state = store.channel(&id).unwrap().unwrap();
    assert_eq!(state.last_seq, Seq(20));
    let sum = receipts.iter().map(|r| r.receipt.value.0).sum::<u128>();
    assert_eq!(state.cumulative, Wei(sum));
    assert_eq!(audit(&store).unwrap().receipts, 20);

    // A replayed receipt is refused and nothing changes.
    let old = store.receipt(&id, Seq(5)).unwrap().unwrap();
    assert!(matches!(store.record_receipt(&old.receipt, &old.voucher), Err(StoreError::SeqGap { .. })));
    assert_eq!(store.channel(&id).unwrap().unwrap(), state);

    // Re-putting the channel (say, a new deposit) keeps its progress.
    let topped_up = Wei(state.deposit.0 + 5);
    store.put_channel(&test_channel(topped_up)).unwrap();
    let after = store.channel(&id).unwrap().unwrap();
    assert_eq!((after.last_seq, after.cumulative, after.deposit), (Seq(20), state.cumulative, topped_up));

    // Settlement marks move forward only, and never past the last receipt.
    assert_eq!(store.mark_settled(&id, Seq(10)).unwrap().settled_seq, Seq(10));
    assert!(store.mark_settled(&id, Seq(9)).is_err());
    assert!(store.mark_settled(&id, Seq(21)).is_err());
    assert_eq!(store.receipts_after(&id, Seq(10)).unwrap().len(), 10);

    // The driver resumes after the settlement and continues the sequence.
    let mut driver = Driver::resume(&store).unwrap();
    assert_eq!(driver.round(&store, 1).unwrap().receipt.seq, Seq(21));
}

#[test]
fn weights_survive_reopen() {
    use attrinet_market::{PPM_WHOLE, Weight, Weights};
    let dir = tempfile::tempdir().unwrap();
    let w = Weights::new(vec![
        Weight { contributor: alloy_primitives::Address::repeat_byte(1), ppm: 400_000 },
        Weight { contributor: alloy_primitives::Address::repeat_byte(2), ppm: PPM_WHOLE - 400_000 },
    ])
    .unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.put_weights(&w).unwrap();
        store.put_weights(&w).unwrap(); // idempotent
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.weights(&w.root()).unwrap(), Some(w));
    assert_eq!(store.weights(&alloy_primitives::B256::ZERO).unwrap(), None);
}
