//! Child process of the crash test: records co-signed receipts into a sled store in a loop
//! and prints `seq cumulative` after each `record_receipt` call returns, until killed.
//!
//! Usage: `receipt-writer STORE_DIR`

use std::io::Write;

use attrinet_node::SledStore;
use attrinet_tests::Driver;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: receipt-writer STORE_DIR"))?;
    let store = SledStore::open(dir.as_ref())?;
    let mut driver = Driver::resume(&store)?;
    let mut out = std::io::stdout().lock();
    loop {
        let r = driver.round(&store, 1_700_000_000)?;
        // Printed only after the store call returned: a printed seq is an acknowledged one.
        writeln!(out, "{} {}", r.receipt.seq.0, r.receipt.cumulative.0)?;
        out.flush()?;
    }
}
