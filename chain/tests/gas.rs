//! The gas report: what each contract operation costs, checked against the committed
//! `chain/gas-report.txt` within a tolerance (regenerate with `scripts/gas-report`).
//! Settlement gas must not grow with the number of receipts.

use std::collections::BTreeMap;
use std::sync::Arc;

use alloy::primitives::{Address, U256};
use attrinet_chain::{Batch, ChainClient, MemSource};
use attrinet_market::{Identity, PPM_WHOLE, Seq, Wei, Weight, Weights, payout_runs};

use crate::attribution::bad_data_case;
use crate::fraud::{bad_case, watcher};
use crate::util::{BOND, ETH, WINDOW, World, forge_receipts, tree_of, voucher};

/// Relative tolerance against the committed report, in percent. Gas is deterministic for
/// a given compiler and chain, except for calldata: a signature or hash with more zero
/// bytes is a little cheaper.
const TOLERANCE_PCT: u64 = 2;

fn report_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gas-report.txt")
}

async fn measure() -> BTreeMap<String, u64> {
    let w = World::new().await;
    let mut gas = BTreeMap::new();

    // Settlement at three batch sizes, one channel each. The node's first settlement
    // also initialises its bond lock (a fresh storage slot, ~17k gas more); it is
    // measured apart so that the three sizes are compared in the same state.
    for (name, n) in [("settle/first-of-node", 10usize), ("settle/10", 10), ("settle/100", 100), ("settle/1000", 1000)]
    {
        let (id, params) = w.open(Wei(10 * ETH)).await;
        let now = w.now().await;
        let receipts = forge_receipts(&w, &params, &[(w.model, w.price)], 1, Wei::ZERO, n, now, |_, _| {});
        let tree = tree_of(&receipts);
        let last = receipts.last().unwrap().receipt.clone();
        let v = voucher(&w, &params, last.seq.0, last.cumulative, &tree);
        let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
        let payouts = payout_runs(&plain, None, |_| Ok((0, w.split))).unwrap().0;
        // A new block time for each: the bond lock is then rewritten every time, not
        // only when the clock happened to tick between two settlements.
        w.anvil.advance(1).await.unwrap();
        gas.insert(name.to_string(), w.node.chain.settle(&v, &payouts).await.unwrap().gas_used);
        if name == "settle/10" {
            w.anvil.advance(WINDOW + 1).await.unwrap();
            gas.insert("finalize".into(), w.node.chain.finalize(id, &payouts).await.unwrap().gas_used);
            gas.insert("withdraw".into(), w.node.chain.withdraw().await.unwrap().gas_used);
        }
    }

    // The same with attribution weights on every receipt: the settlement carries one data
    // root per run, so it stays flat too. Then finalize (crediting the pool the rest) and
    // one contributor's claim.
    let claimer = Identity::from_secrets([0x5c; 32], [0x5d; 32]).unwrap();
    w.anvil.fund(claimer.address(), U256::from(ETH)).await.unwrap();
    let weights = [
        Weights::from_scores(&BTreeMap::from([(Address::repeat_byte(0x11), 3), (claimer.address(), 7)])),
        Weights::none(),
        Weights::new(vec![Weight { contributor: Address::repeat_byte(0x22), ppm: PPM_WHOLE }]).unwrap(),
    ];
    for (name, n) in [("settle/attributed-10", 10usize), ("settle/attributed-1000", 1000)] {
        let (id, params) = w.open(Wei(10 * ETH)).await;
        let now = w.now().await;
        let receipts = forge_receipts(&w, &params, &[(w.model, w.price)], 1, Wei::ZERO, n, now, |i, r| {
            r.attribution_root = weights[i % 3].root();
        });
        let tree = tree_of(&receipts);
        let last = receipts.last().unwrap().receipt.clone();
        let v = voucher(&w, &params, last.seq.0, last.cumulative, &tree);
        let plain: Vec<_> = receipts.iter().map(|r| r.receipt.clone()).collect();
        let ws: Vec<Weights> = (0..n).map(|i| weights[i % 3].clone()).collect();
        let (payouts, data) = payout_runs(&plain, Some(&ws), |_| Ok((0, w.split))).unwrap();
        w.anvil.advance(1).await.unwrap();
        gas.insert(name.to_string(), w.node.chain.settle(&v, &payouts).await.unwrap().gas_used);
        if n == 10 {
            w.anvil.advance(WINDOW + 1).await.unwrap();
            gas.insert("finalize/attributed".into(), w.node.chain.finalize(id, &payouts).await.unwrap().gas_used);
            let client = ChainClient::connect(&w.anvil.endpoint(), claimer.evm.clone(), w.deployment).unwrap();
            let claim = data[0].claim(&claimer.address()).unwrap();
            let out = client.claim_data(id, Seq(n as u64), &payouts, 0, &claim).await.unwrap();
            gas.insert("claim_data".into(), out.gas_used);
        }
    }

    let (id, _) = w.payer.chain.open(w.node.address(), &w.payer.id.public_key(), Wei(ETH)).await.unwrap();
    let (id2, out) = w.payer.chain.open(w.node.address(), &w.payer.id.public_key(), Wei(ETH)).await.unwrap();
    let _ = id2;
    gas.insert("open".into(), out.gas_used);
    gas.insert("top_up".into(), w.payer.chain.top_up(id, Wei(ETH)).await.unwrap().gas_used);
    gas.insert("thaw".into(), w.payer.chain.thaw(id).await.unwrap().gas_used);
    w.anvil.advance(crate::util::THAW + 1).await.unwrap();
    gas.insert("withdraw_deposit".into(), w.payer.chain.withdraw_deposit(id).await.unwrap().gas_used);

    // One dispute of each class (8-leaf batches or smaller; a dispute's proof grows with
    // log2 of the batch).
    for (case, kind) in [
        ("seq", "seq"),
        ("seq-start", "seq"),
        ("value", "value"),
        ("split", "split"),
        ("sum", "sum"),
        ("attribution", "attribution"),
        ("run-sum", "run-sum"),
    ] {
        let (_, params) = w.open(Wei(10 * ETH)).await;
        let bad = bad_case(&w, &params, case).await;
        let source = Arc::new(MemSource::default());
        source
            .publish(bad.tree.root().hash, Batch { tree: Some(bad.tree.clone()), ..Batch::new(bad.receipts.clone()) });
        let mut watcher = watcher(&w, source);
        w.node.chain.settle(&bad.voucher, &bad.payouts).await.unwrap();
        let report = watcher.step().await.unwrap();
        assert_eq!(report.disputed.len(), 1, "{case}: {report:?}");
        assert_eq!(report.disputed[0].1, kind);
        gas.insert(format!("dispute/{case}"), report.disputed[0].2.gas_used);
        w.node.chain.add_bond(BOND).await.unwrap();
    }
    // The data disputes, on the same six-receipt batch with eight data entries.
    for case in ["data-entry", "data-missing", "data-order", "data-sum", "data-shape", "weights", "outsider"] {
        let (_, params) = w.open(Wei(10 * ETH)).await;
        let bad = bad_data_case(&w, &params, case).await;
        let source = Arc::new(MemSource::default());
        source.publish(bad.voucher.voucher.receipts_root, bad.batch.clone());
        let mut watcher = watcher(&w, source);
        w.node.chain.settle(&bad.voucher, &bad.payouts).await.unwrap();
        let report = watcher.step().await.unwrap();
        assert_eq!(report.disputed.len(), 1, "{case}: {report:?}");
        gas.insert(format!("dispute/{case}"), report.disputed[0].2.gas_used);
        w.node.chain.add_bond(BOND).await.unwrap();
    }
    gas
}

fn render(gas: &BTreeMap<String, u64>) -> String {
    let mut out = String::from(
        "# Gas used by attrinet's contracts on anvil --optimism (solc 0.8.37, via-IR, 200 runs).\n\
         # Generated by scripts/gas-report; checked by `cargo test -p attrinet-chain` within 2%.\n",
    );
    for (k, v) in gas {
        out.push_str(&format!("{k} {v}\n"));
    }
    out
}

fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("`name gas` lines");
            (k.to_string(), v.trim().parse().expect("gas is an integer"))
        })
        .collect()
}

#[tokio::test]
async fn gas_report_matches_the_committed_one_and_settlement_is_flat() {
    let gas = measure().await;
    let (s10, s1000) = (gas["settle/10"], gas["settle/1000"]);
    // Flat: a thousand receipts cost what ten do, up to calldata noise.
    assert!(s1000.abs_diff(s10) * 100 <= s10, "settle gas grows with receipts: {s10} vs {s1000}");
    let (a10, a1000) = (gas["settle/attributed-10"], gas["settle/attributed-1000"]);
    assert!(a1000.abs_diff(a10) * 100 <= a10, "attributed settle gas grows with receipts: {a10} vs {a1000}");
    for n in [10u64, 100, 1000] {
        println!(
            "settle/{n}: {} gas, {} gas per receipt",
            gas[&format!("settle/{n}")],
            gas[&format!("settle/{n}")] / n
        );
    }

    if std::env::var_os("ATTRINET_WRITE_GAS_REPORT").is_some() {
        std::fs::write(report_path(), render(&gas)).unwrap();
        return;
    }
    let committed =
        parse(&std::fs::read_to_string(report_path()).expect("chain/gas-report.txt: run scripts/gas-report"));
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        gas.keys().collect::<Vec<_>>(),
        "operations differ from the report"
    );
    for (k, was) in &committed {
        let now = gas[k];
        assert!(
            now.abs_diff(*was) * 100 <= was * TOLERANCE_PCT,
            "{k}: {now} gas, the committed report says {was} (more than {TOLERANCE_PCT}% apart): run scripts/gas-report"
        );
    }
}
