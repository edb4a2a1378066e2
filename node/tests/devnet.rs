//! `attrinet devnet` with small numbers, against the real model and a real anvil: every
//! figure of its summary is checked against the chain's state.

use attrinet_compute::Backend;
use attrinet_node::devnet::{DevnetConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_summary_matches_the_chain() {
    // Cargo sets CARGO_MANIFEST_DIR when it runs the test too; prefer that over the value
    // baked in at compile time, which is wrong for a binary built in another checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let model = std::path::Path::new(&manifest).join("../models/SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(model.exists(), "{} missing: scripts/test runs scripts/fetch-model first", model.display());
    let dir = tempfile::tempdir().unwrap();
    let config = DevnetConfig {
        nodes: 2,
        queries: 3,
        max_tokens: 10,
        model,
        backend: Backend::Candle,
        data_dir: dir.path().to_path_buf(),
        challenge_window: 3,
    };
    let (summary, live) = run(&config).await.expect("devnet runs");
    println!("{}", summary.render());

    // 3 queries, then one more after the first settlement.
    assert_eq!(summary.queries.len(), 4);
    assert!(summary.second_batch_verified, "the second batch was verified honest");
    assert!(summary.queries[0].answer.contains("Paris"), "first answer: {:?}", summary.queries[0].answer);
    assert_eq!(summary.receipts, 4);
    // Credited on chain == the exact splits of the receipts, for every beneficiary.
    assert!(summary.consistent(), "{}", summary.render());
    let credited: u128 = summary.earnings.iter().map(|(_, _, w)| w.0).sum::<u128>()
        + summary.contributors.iter().map(|(_, _, w, _)| w.0).sum::<u128>();
    assert_eq!(credited, summary.paid.0, "everything paid was credited, nothing more");
    // The France answer copies the geography contributor's passage: it was attributed and
    // that contributor claimed a non-zero share on chain.
    let (name, _, claimed, owed) = &summary.contributors[0];
    assert_eq!(name, "geography notes");
    assert!(claimed.0 > 0 && claimed == owed, "{}", summary.render());
    // `attrinet earnings --contributor` reads the same from the chain, per model.
    let live = live.expect("live devnet");
    let who = summary.contributors[0].1;
    let earned = attrinet_node::earnings(&live.endpoint, live.deployment, who).await.unwrap();
    assert_eq!(earned.withdrawable, *claimed);
    assert_eq!(earned.claimed_by_model.values().copied().map(|w| w.0).sum::<u128>(), claimed.0);
    assert_eq!(earned.claimed_by_model.len(), 1, "one model");
    assert!(summary.earnings.iter().take(2).all(|(_, _, w)| w.0 > 0), "both nodes earned");
    // The dishonest settlement was disputed and the cheating node's whole bond moved.
    let (class, bond) = summary.dispute.clone().expect("a dispute happened");
    assert_eq!(class, "split");
    assert_eq!(bond.0, attrinet_node::devnet::ETH);
}
