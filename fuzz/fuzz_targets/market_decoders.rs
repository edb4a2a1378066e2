//! Bytes from a peer into the market's decoders: gossiped adverts (`from_gossip`, which a
//! node runs on every advert it receives), and postcard-encoded receipts, vouchers and
//! weights (as they arrive in `Propose`, `Pay` and batch frames). The first byte picks
//! the decoder. Besides not panicking, whatever decodes must encode back to a value that
//! decodes to itself, and checking its signatures must return, never panic.
#![no_main]

use attrinet_market::{PublicKey, SignedAdvert, SignedReceipt, SignedVoucher, Weights, decode, encode};
use libfuzzer_sys::fuzz_target;

fn roundtrips<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let again: T = decode(&encode(value)).expect("what decoded once decodes again");
    assert_eq!(&again, value);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let publisher = PublicKey(bytes.get(..32).and_then(|k| k.try_into().ok()).unwrap_or([0; 32]));
            if let Ok(advert) = SignedAdvert::from_gossip(bytes, &publisher, 1_000) {
                assert_eq!(advert.advert.node_key, publisher, "only the publisher's own advert passes");
                roundtrips(&advert);
            }
        }
        1 => {
            if let Ok(r) = decode::<SignedReceipt>(bytes) {
                let _ = r.verify();
                roundtrips(&r);
            }
        }
        2 => {
            if let Ok(v) = decode::<SignedVoucher>(bytes) {
                roundtrips(&v);
            }
        }
        _ => {
            if let Ok(w) = decode::<Weights>(bytes) {
                roundtrips(&w);
            }
        }
    }
});
