//! A datanet index file's bytes into `Datanet::from_bytes`, which `load_datanet` (a
//! provider's `--datanet FILE`, a watcher's check) runs on whatever the file holds. The
//! first byte picks the input: the bytes as they are, or (odd) an index built from
//! contributions the bytes describe, saved, and then damaged at one byte that the input
//! chooses, so that the decoder is fed near-valid files (a valid suffix array is too rare
//! to be found by chance).
//!
//! Besides not panicking: whatever loads saves and loads back equal, and is exactly the
//! index built from its own contributions (the suffix array check accepts the one right
//! array only, so a damaged file loads only if it still says the same thing); attributing
//! an output gives spans inside it, in order, at least the minimum span long, and weights
//! that sum to a whole (or none).
#![no_main]

use alloy_primitives::Address;
use attrinet_market::{Contribution, Datanet, PPM_WHOLE};
use libfuzzer_sys::fuzz_target;

/// Contributions described by `bytes`: a minimum span, then per contribution an owner
/// byte and a length byte, and as many token bytes over a small alphabet (so that spans
/// repeat).
fn described(bytes: &[u8]) -> Option<(u32, Vec<Contribution>)> {
    let (&span, mut rest) = bytes.split_first()?;
    let mut contributions = Vec::new();
    while let [owner, len, tail @ ..] = rest {
        let n = (usize::from(*len) % 12 + 1).min(tail.len());
        let (tokens, next) = tail.split_at(n);
        contributions.push(Contribution {
            owner: Address::repeat_byte(owner % 4),
            name: format!("c{}", contributions.len()),
            tokens: tokens.iter().map(|&t| u32::from(t % 6)).collect(),
        });
        rest = next;
    }
    Some((u32::from(span % 4), contributions))
}

fn check(datanet: &Datanet, output: &[u8]) {
    let again = Datanet::from_bytes(&datanet.to_bytes()).expect("a loaded index saves and loads");
    assert_eq!(&again, datanet);
    let contributions = datanet
        .contributions()
        .map(|(owner, name, tokens)| Contribution { owner, name: name.to_owned(), tokens: tokens.to_vec() })
        .collect();
    let built = Datanet::build(datanet.min_span(), contributions).expect("a loaded index's contributions build");
    assert_eq!(&built, datanet, "a loaded index is the one its contributions build");
    assert_eq!(built.root(), datanet.root());

    let output: Vec<u32> = output.iter().map(|&t| u32::from(t % 7)).collect();
    let a = datanet.attribute(&output);
    let mut end = 0;
    for s in &a.spans {
        assert!(s.start >= end && s.len >= datanet.min_span(), "{:?}", a.spans);
        end = s.start + s.len;
        assert!(end as usize <= output.len() && !s.contributors.is_empty() && s.occurrences > 0);
    }
    let total: u64 = a.weights.as_slice().iter().map(|w| u64::from(w.ppm)).sum();
    assert!(total == u64::from(PPM_WHOLE) || (a.spans.is_empty() && a.weights.is_empty()), "{a:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if let Ok(d) = Datanet::from_bytes(rest) {
            check(&d, rest);
        }
        return;
    }
    // [at: 2 bytes][xor: 1 byte][description][output]
    let [a, b, x, rest @ ..] = rest else { return };
    let half = rest.len() / 2;
    let Some((span, contributions)) = described(&rest[..half]) else { return };
    let Ok(datanet) = Datanet::build(span, contributions) else { return };
    let mut bytes = datanet.to_bytes();
    assert_eq!(Datanet::from_bytes(&bytes).as_ref(), Ok(&datanet), "an index saved loads back");
    check(&datanet, &rest[half..]);
    let at = usize::from(u16::from_le_bytes([*a, *b])) % bytes.len();
    bytes[at] ^= x | 1;
    if let Ok(d) = Datanet::from_bytes(&bytes) {
        check(&d, &rest[half..]);
    }
});
