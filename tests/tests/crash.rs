//! Crash test: a child process records co-signed receipts in a loop and prints each seq
//! after its store call returns; we SIGKILL it at random moments, restart it, and check that
//! no acknowledged receipt is ever lost, seqs stay contiguous and the cumulative adds up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use attrinet_market::{Seq, Store, Wei};
use attrinet_node::{SledStore, audit};
use attrinet_tests::{test_channel, test_quote, tokens_for, weights_for};

/// Kills per run unless `CRASH_KILLS` says otherwise (CI keeps this; `scripts/crash-long`
/// runs 1,000 and docs/benchmarks.md records it).
const KILLS: u32 = 60;

/// xorshift64*: the kill moments only need to be varied and reproducible from a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn acknowledged_receipts_survive_sigkill() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    let kills = match std::env::var("CRASH_KILLS") {
        Ok(n) => n.parse().unwrap_or_else(|_| panic!("CRASH_KILLS={n}: not a whole number of kills")),
        Err(_) => KILLS,
    };
    println!("crash test seed {seed}, {kills} kills (rerun with CRASH_SEED={seed} CRASH_KILLS={kills})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_receipt-writer");

    let mut acknowledged: Vec<(u64, u128)> = Vec::new();
    let mut survived = 0;
    for kill in 0..kills {
        let mut child = Command::new(exe)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn receipt-writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace().map(|p| p.parse::<u128>().unwrap());
                let (seq, cumulative) = (parts.next().unwrap() as u64, parts.next().unwrap());
                if tx.send((seq, cumulative)).is_err() {
                    break;
                }
            }
        });
        // Let it get going (first line), then kill at a random moment 0–40 ms later, so kills
        // land anywhere: mid-transaction, mid-flush, between a flush and the print.
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("writer printed nothing in 30 s");
        acknowledged.push(first);
        std::thread::sleep(Duration::from_micros(rng.next() % 40_000));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "writer exited on its own: {status}");
        reader.join().unwrap();
        acknowledged.extend(rx.try_iter());
        survived = kill + 1;

        // Every acknowledged seq is in the store, in order, with the printed cumulative.
        let store = SledStore::open(dir.path()).unwrap();
        let id = test_channel(Wei(0)).params.id;
        let state = store.channel(&id).unwrap().expect("channel stored");
        let last_ack = acknowledged.last().unwrap().0;
        assert!(
            state.last_seq.0 >= last_ack,
            "kill {kill}: acknowledged seq {last_ack} but store ends at {}",
            state.last_seq
        );
        audit(&store).unwrap_or_else(|e| panic!("kill {kill}: store inconsistent: {e}"));
        drop(store);
    }

    // Printed seqs strictly increase across restarts: no acknowledged seq was lost and then
    // issued again. A jump is a receipt made durable but killed before it was printed,
    // which is allowed (stored, never acknowledged); the store itself has no gap (audit).
    let mut unacknowledged = 0;
    for w in acknowledged.windows(2) {
        assert!(w[1].0 > w[0].0, "printed seq {} after {}", w[1].0, w[0].0);
        unacknowledged += w[1].0 - w[0].0 - 1;
    }
    let store = SledStore::open(dir.path()).unwrap();
    let id = test_channel(Wei(0)).params.id;
    let state = store.channel(&id).unwrap().unwrap();
    let quote = test_quote();
    let mut expected = 0u128;
    for seq in 1..=state.last_seq.0 {
        let (i, o) = tokens_for(Seq(seq));
        expected += quote.price.value(i, o).unwrap().0;
        let stored = store.receipt(&id, Seq(seq)).unwrap().unwrap_or_else(|| panic!("seq {seq} missing"));
        stored.receipt.verify().unwrap();
        assert_eq!(stored.receipt.receipt.cumulative, Wei(expected), "cumulative at seq {seq}");
        // Its weights were stored before it, so they survived with it.
        let weights = weights_for(Seq(seq));
        assert_eq!(stored.receipt.receipt.attribution_root, weights.root());
        assert_eq!(store.weights(&weights.root()).unwrap(), Some(weights), "weights of seq {seq} lost");
    }
    for (seq, cumulative) in &acknowledged {
        let stored = store.receipt(&id, Seq(*seq)).unwrap().unwrap_or_else(|| panic!("acknowledged seq {seq} lost"));
        assert_eq!(stored.receipt.receipt.cumulative, Wei(*cumulative));
    }
    assert_eq!(state.cumulative, Wei(expected));
    println!(
        "crash test: survived {survived} SIGKILLs; {} receipts stored, {} acknowledged, \
         {unacknowledged} stored but killed before acknowledging, cumulative {}",
        state.last_seq.0,
        acknowledged.len(),
        state.cumulative
    );
}
