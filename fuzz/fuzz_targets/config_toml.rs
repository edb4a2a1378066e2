//! A config file's text into `FileConfig::from_toml` (what `FileConfig::load` runs on
//! `--config PATH` or `<data-dir>/config.toml`), and its amounts into `parse_wei`, as
//! `serve` and the client read them. The first byte picks the input: the whole text as a
//! config file, or (odd) the rest as one amount.
//!
//! Besides not panicking: a config that parses writes out (`to_toml`, what `save` writes)
//! and reads back equal; an amount that parses is read the same whatever its case and
//! surrounding spaces, and reads back the same from what `Wei` prints and from its exact
//! value in wei, gwei and eth; one that does not parse says so with a message naming it.
#![no_main]

use attrinet_node::config::{FileConfig, parse_wei};
use libfuzzer_sys::fuzz_target;

const GWEI: u128 = 1_000_000_000;
const ETH: u128 = GWEI * GWEI;

/// `value / scale` written exactly with its decimals.
fn decimal(value: u128, scale: u128, digits: usize) -> String {
    format!("{}.{:0digits$}", value / scale, value % scale)
}

fn amount(s: &str) {
    match parse_wei(s) {
        Ok(w) => {
            assert_eq!(parse_wei(&s.to_ascii_uppercase()), Ok(w), "case");
            assert_eq!(parse_wei(&format!(" {s}\t")), Ok(w), "spaces");
            for exact in [w.to_string(), w.0.to_string(), format!("{}wei", w.0)] {
                assert_eq!(parse_wei(&exact), Ok(w), "{exact}");
            }
            assert_eq!(parse_wei(&format!("{}gwei", decimal(w.0, GWEI, 9))), Ok(w));
            assert_eq!(parse_wei(&format!("{} ETH", decimal(w.0, ETH, 18))), Ok(w));
        }
        Err(e) => assert!(e.contains(&format!("`{s}`")), "{e} does not name {s:?}"),
    }
}

fn config(text: &str) {
    let Ok(c) = FileConfig::from_toml(text) else { return };
    let written = c.to_toml().expect("a config that was read can be written");
    let again = FileConfig::from_toml(&written).unwrap_or_else(|e| panic!("{written:?} does not read back: {e}"));
    assert_eq!(again, c, "{written}");
    let amounts = [
        &c.serve.price_in,
        &c.serve.price_out,
        &c.serve.exposure_limit,
        &c.serve.bond,
        &c.serve.settle_threshold,
        &c.client.deposit,
    ];
    amounts.into_iter().flatten().for_each(|a| amount(a));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if which % 2 == 0 { config(text) } else { amount(text) }
});

