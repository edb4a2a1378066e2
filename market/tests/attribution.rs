//! Proof of Attribution: the index finds exactly the spans a brute-force scan finds, weights
//! always sum exactly, the same inputs always give the same weights, an unrelated
//! contribution changes nobody's weight, saved indexes load to the same index and corrupt
//! ones are refused, and data shares never pay out more than the run's data share.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use attrinet_market::*;
use proptest::prelude::*;

fn owner(i: u8) -> Address {
    Address::repeat_byte(i + 1)
}

/// A brute-force attribution, straight from the words of docs/protocol.md: at each
/// position, the longest prefix of the rest of the output found inside any one
/// contribution; spans of at least `min` tokens; each span's length shared between the
/// distinct owners of the contributions containing it.
fn reference(contributions: &[(Address, Vec<u32>)], min: usize, output: &[u32]) -> (Vec<Span>, Weights) {
    let contains = |c: &[u32], s: &[u32]| c.windows(s.len()).any(|w| w == s);
    let occurrences = |c: &[u32], s: &[u32]| c.windows(s.len()).filter(|w| *w == s).count() as u64;
    let mut spans = Vec::new();
    let mut scores: BTreeMap<Address, u128> = BTreeMap::new();
    let mut i = 0;
    while i < output.len() {
        let rest = &output[i..];
        let best = (1..=rest.len()).rev().find(|&l| contributions.iter().any(|(_, c)| contains(c, &rest[..l])));
        match best {
            Some(len) if len >= min => {
                let span = &rest[..len];
                let mut owners: Vec<Address> =
                    contributions.iter().filter(|(_, c)| contains(c, span)).map(|(o, _)| *o).collect();
                owners.sort();
                owners.dedup();
                let occ = contributions.iter().map(|(_, c)| occurrences(c, span)).sum();
                for o in &owners {
                    *scores.entry(*o).or_default() += len as u128 * 1_000_000 / owners.len() as u128;
                }
                spans.push(Span { start: i as u32, len: len as u32, contributors: owners, occurrences: occ });
                i += len;
            }
            _ => i += 1,
        }
    }
    (spans, Weights::from_scores(&scores))
}

fn build(min: u32, contributions: &[(Address, Vec<u32>)]) -> Datanet {
    let cs = contributions
        .iter()
        .enumerate()
        .map(|(i, (owner, tokens))| Contribution { owner: *owner, name: format!("c{i}"), tokens: tokens.clone() })
        .collect();
    Datanet::build(min, cs).expect("valid datanet")
}

/// Small alphabets make long shared spans likely, which is what the index must get right.
fn contributions() -> impl Strategy<Value = Vec<(Address, Vec<u32>)>> {
    prop::collection::vec((0u8..4, prop::collection::vec(0u32..4, 1..40)), 1..7)
        .prop_map(|v| v.into_iter().map(|(o, t)| (owner(o), t)).collect())
}

fn output() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..5, 0..60)
}

fn check_weights_rules(w: &Weights) {
    let sum: u64 = w.as_slice().iter().map(|w| u64::from(w.ppm)).sum();
    assert!(w.is_empty() || sum == u64::from(PPM_WHOLE), "sum {sum}");
    assert!(w.as_slice().iter().all(|w| w.ppm > 0));
    assert!(w.as_slice().windows(2).all(|p| p[0].contributor < p[1].contributor));
    // The rules are those Weights::new (and decoding) enforce.
    assert_eq!(Weights::new(w.as_slice().to_vec()).as_ref(), Ok(w));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn index_finds_exactly_the_brute_force_spans(cs in contributions(), out in output(), min in 1u32..6) {
        let datanet = build(min, &cs);
        let got = datanet.attribute(&out);
        let (spans, weights) = reference(&cs, min as usize, &out);
        prop_assert_eq!(got.spans, spans);
        prop_assert_eq!(got.weights, weights);
    }

    #[test]
    fn weights_always_sum_exactly(cs in contributions(), out in output(), min in 1u32..6) {
        let a = build(min, &cs).attribute(&out);
        check_weights_rules(&a.weights);
        // Weights exist exactly when a span was found.
        prop_assert_eq!(a.weights.is_empty(), a.spans.is_empty());
        // Every span lies inside the output, spans never overlap, and each is long enough.
        let mut end = 0;
        for s in &a.spans {
            prop_assert!(s.start >= end && s.len >= min && (s.start + s.len) as usize <= out.len());
            end = s.start + s.len;
        }
    }

    #[test]
    fn arbitrary_scores_make_whole_weights(scores in prop::collection::btree_map(0u8..40, any::<u128>(), 0..20)) {
        let scores: BTreeMap<Address, u128> = scores.into_iter().map(|(o, s)| (owner(o), s)).collect();
        let w = Weights::from_scores(&scores);
        check_weights_rules(&w);
        prop_assert_eq!(w.is_empty(), scores.values().all(|s| *s == 0));
        // Never more than one ppm above the exact share (largest remainder rounds each way by < 1).
        let total: f64 = scores.values().map(|s| *s as f64).sum();
        for x in w.as_slice() {
            let exact = scores[&x.contributor] as f64 / total * 1e6;
            prop_assert!((f64::from(x.ppm) - exact).abs() < 1.0 + 1e-6 * exact, "{} vs {exact}", x.ppm);
        }
    }

    #[test]
    fn same_inputs_give_the_same_weights(cs in contributions(), out in output(), min in 1u32..6) {
        let first = build(min, &cs);
        let again = build(min, &cs);
        prop_assert_eq!(first.root(), again.root());
        let a = first.attribute(&out);
        prop_assert_eq!(&a, &again.attribute(&out));
        prop_assert_eq!(&a, &first.attribute(&out));
        prop_assert_eq!(a.weights.root(), again.attribute(&out).weights.root());
        // A saved and loaded index is the same index.
        let loaded = Datanet::from_bytes(&first.to_bytes()).unwrap();
        prop_assert_eq!(&loaded, &first);
        prop_assert_eq!(&loaded.attribute(&out), &a);
    }

    #[test]
    fn an_unrelated_contribution_changes_no_one_else(
        cs in contributions(),
        out in output(),
        min in 1u32..6,
        extra in prop::collection::vec(100u32..110, 1..40),
        extra_owner in 0u8..8,
        at in any::<prop::sample::Index>(),
    ) {
        let before = build(min, &cs).attribute(&out);
        let mut more = cs.clone();
        // Anywhere in the order, by a new or an existing owner: tokens the output never uses.
        more.insert(at.index(cs.len() + 1), (owner(extra_owner), extra));
        let after = build(min, &more).attribute(&out);
        prop_assert_eq!(&after, &before);
        // Hence, in particular, the relative order of everyone's weights is unchanged.
        let order = |w: &Weights| {
            let mut v: Vec<_> = w.as_slice().iter().map(|w| (w.ppm, w.contributor)).collect();
            v.sort();
            v.into_iter().map(|(_, c)| c).collect::<Vec<_>>()
        };
        prop_assert_eq!(order(&after.weights), order(&before.weights));
    }

    #[test]
    fn a_contribution_sharing_no_min_span_changes_no_one_else(
        cs in contributions(),
        out in output(),
        min in 2u32..6,
        extra in prop::collection::vec(0u32..5, 1..40),
    ) {
        // Same alphabet as the output, but only kept when no min-span window of the
        // output occurs in it: it can lengthen short matches, never make or grow a span.
        let shares = out.windows(min as usize).any(|w| extra.windows(w.len()).any(|e| e == w));
        prop_assume!(!shares);
        let before = build(min, &cs).attribute(&out);
        let mut more = cs.clone();
        more.push((owner(9), extra));
        prop_assert_eq!(build(min, &more).attribute(&out), before);
    }

    #[test]
    fn weight_proofs_verify_and_bind_their_leaf(cs in contributions(), out in output(), min in 1u32..4) {
        let w = build(min, &cs).attribute(&out).weights;
        let root = w.root();
        prop_assert_eq!(root == B256::ZERO, w.is_empty());
        for i in 0..w.len() {
            let leaf = w.leaf(i).unwrap();
            prop_assert_eq!(leaf, weight_digest(&w.as_slice()[i], w.len() as u32));
            let proof = w.proof(i).unwrap();
            prop_assert!(proof.verify(&leaf, &root).is_ok());
            // The same weight claimed in a tree of another size does not verify.
            let other = weight_digest(&w.as_slice()[i], w.len() as u32 + 1);
            prop_assert!(proof.verify(&other, &root).is_err());
        }
    }

    #[test]
    fn outsider_proofs_exist_exactly_for_non_contributors(cs in contributions(), who in 0u8..8, min in 1u32..4) {
        let datanet = build(min, &cs);
        let who = owner(who);
        let member = datanet.contributors().contains(&who);
        let proof = datanet.outsider_proof(&who);
        prop_assert_eq!(proof.is_none(), member);
        let Some(proof) = proof else { return Ok(()) };
        prop_assert!(proof.verify(&who, &datanet.root()));
        // It proves nothing about a member, nor against another datanet.
        for m in datanet.contributors() {
            prop_assert!(!proof.verify(m, &datanet.root()));
        }
        prop_assert!(!proof.verify(&who, &build(min + 1, &cs).root()));
        // Dropping a neighbour that exists, or swapping in a farther one, breaks it.
        if proof.below.is_some() && proof.above.is_some() {
            let one_sided = OutsiderProof { below: None, ..proof.clone() };
            prop_assert!(!one_sided.verify(&who, &datanet.root()));
        }
        // A neighbour named by another address than its leaf's does not verify (owners
        // here are repeat_byte(1..=4), never 0xfe…).
        if let Some((_, p)) = &proof.above {
            let renamed = OutsiderProof { above: Some((Address::repeat_byte(0xfe), p.clone())), ..proof.clone() };
            prop_assert!(!renamed.verify(&who, &datanet.root()));
        }
    }

    #[test]
    fn corrupt_index_bytes_never_panic_and_never_load_a_wrong_index(
        cs in contributions(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let datanet = build(3, &cs);
        let mut bytes = datanet.to_bytes();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Ok(loaded) = Datanet::from_bytes(&bytes) {
            // Whatever loads is a correct index of what it holds: rebuilding agrees.
            let cs: Vec<_> = loaded
                .contributions()
                .map(|(o, n, t)| Contribution { owner: o, name: n.to_string(), tokens: t.to_vec() })
                .collect();
            let rebuilt = Datanet::build(loaded.min_span(), cs).unwrap();
            prop_assert_eq!(rebuilt, loaded);
        }
    }

    #[test]
    fn data_entries_never_pay_more_than_the_run(
        receipts in prop::collection::vec((1u128..1u128 << 100, prop::collection::btree_map(0u8..6, 1u128..1000, 0..5)), 1..12),
        data_bps in 0u128..=10_000,
    ) {
        let weights: Vec<Weights> = receipts
            .iter()
            .map(|(_, s)| Weights::from_scores(&s.iter().map(|(o, v)| (owner(*o), *v)).collect()))
            .collect();
        let run_value = Wei(receipts.iter().map(|(v, _)| *v).sum());
        let run_data = Wei(run_value.0 / 10_000 * data_bps);
        let entries = run_data_entries(
            receipts.iter().zip(&weights).enumerate().map(|(i, ((v, _), w))| (i as u64, Wei(*v), w)),
            run_value,
            run_data,
        );
        let total: u128 = entries.iter().map(|e| e.amount.0).sum();
        prop_assert!(total <= run_data.0);
        // Sorted by (contributor, leaf), no duplicates, no zero entries.
        prop_assert!(entries.windows(2).all(|p| p[0].key() < p[1].key()));
        prop_assert!(entries.iter().all(|e| e.amount.0 > 0));
        // Each entry is its receipt's share of the run split by the contributor's weight.
        for e in &entries {
            let (v, _) = receipts[e.leaf as usize];
            let w = weights[e.leaf as usize].as_slice()[e.weight_index as usize];
            prop_assert_eq!(w.contributor, e.contributor);
            prop_assert_eq!(e.amount, ppm_of(receipt_data_share(Wei(v), run_value, run_data), w.ppm));
        }
        let totals = contributor_totals(&entries).unwrap();
        prop_assert_eq!(totals.iter().map(|t| t.1.0).sum::<u128>(), total);
        // What the contributors get plus what stays with the pool is the run's data share,
        // and what stays is only dust and unattributed receipts: less than one wei per
        // receipt and weight, plus the shares of receipts without weights.
        let unattributed: u128 = receipts
            .iter()
            .zip(&weights)
            .filter(|(_, w)| w.is_empty())
            .map(|((v, _), _)| receipt_data_share(Wei(*v), run_value, run_data).0)
            .sum();
        let pieces = receipts.len() as u128 + weights.iter().map(|w| w.len() as u128).sum::<u128>();
        prop_assert!(run_data.0 - total <= unattributed + pieces);
    }
}

/// A whitespace tokenizer over a fixed vocabulary, as a stand-in for the model's.
fn tokenizer() -> impl Fn(&str) -> Vec<u32> {
    |text: &str| {
        text.split_whitespace()
            .map(|w| {
                let w = w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
                // FNV-1a: a stable id per word, far below the reserved id.
                w.bytes().fold(2_166_136_261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619)) >> 1
            })
            .collect()
    }
}

const RIVERS: &str = "The Danube rises in the Black Forest of Germany and flows south east for nearly \
    three thousand kilometres through ten countries before it empties into the Black Sea through a wide \
    delta of reed beds and lagoons that shelters more than three hundred species of birds.";
const BREAD: &str = "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive \
    with regular feedings of flour and water; bakers keep it at room temperature and refresh it once a day \
    so that the bread rises slowly and tastes faintly sour.";
const ORBITS: &str = "A geostationary satellite orbits the Earth once per sidereal day above the equator, \
    so that from the ground it seems to hang still in the sky, which is why dish antennas for television \
    can point at one fixed spot for years.";

fn hand_made() -> (Datanet, [Address; 3]) {
    let [rivers, bread, orbits] = [owner(10), owner(20), owner(30)];
    let docs = [(rivers, "rivers.txt", RIVERS), (bread, "bread.txt", BREAD), (orbits, "orbits.txt", ORBITS)]
        .map(|(owner, name, text)| Document { owner, name: name.into(), text: text.into() });
    let datanet = Datanet::from_texts(DEFAULT_MIN_SPAN, docs, tokenizer()).unwrap();
    (datanet, [rivers, bread, orbits])
}

#[test]
fn an_answer_copying_a_known_passage_pays_its_contributor_most() {
    let (datanet, [rivers, bread, orbits]) = hand_made();
    // Mostly the bread passage word for word, with a shorter borrowing from the rivers one.
    let answer = "Here is how it works. A sourdough starter is a culture of wild yeast and lactic acid \
        bacteria kept alive with regular feedings of flour and water; bakers keep it at room temperature. \
        Fun fact: the Danube rises in the Black Forest of Germany too.";
    let a = datanet.attribute(&tokenizer()(answer));
    check_weights_rules(&a.weights);
    let (b, r, o) = (a.weights.ppm_of(&bread), a.weights.ppm_of(&rivers), a.weights.ppm_of(&orbits));
    assert!(b > r && r > 0, "bread {b}, rivers {r}");
    assert_eq!(o, 0, "nothing of the orbits passage was used");
    assert_eq!(b + r, PPM_WHOLE);
    // Spans of 28 words ("a sourdough starter ... at room temperature") and 9 ("the danube
    // rises in the black forest of germany"): 28/37 and 9/37 of a million are 756,756.76
    // and 243,243.24, and the missing ppm goes to the larger remainder.
    assert_eq!(
        a.spans.iter().map(|s| (s.len, s.contributors.clone())).collect::<Vec<_>>(),
        vec![(28, vec![bread]), (9, vec![rivers])]
    );
    assert_eq!((b, r), (756_757, 243_243));
}

#[test]
fn an_output_sharing_nothing_gets_no_data_attribution() {
    let (datanet, _) = hand_made();
    // Common words of the datanet, but never eight in a row from one contribution.
    let unrelated = "The weather in the mountains was cold and the sky over the sea was grey, so we \
        stayed at home with a cup of tea and read about the history of the printing press.";
    let a = datanet.attribute(&tokenizer()(unrelated));
    assert!(a.spans.is_empty(), "{:?}", a.spans);
    assert!(a.weights.is_empty());
    assert_eq!(a.weights.root(), B256::ZERO, "the receipt's attributionRoot is zero");
    assert!(datanet.attribute(&[]).weights.is_empty());
}

#[test]
fn a_span_in_several_contributions_is_shared_equally_between_their_owners() {
    let shared = [7, 7, 8, 9, 10];
    let mut mine = vec![1, 2, 3, 4, 5, 6];
    mine.extend_from_slice(&shared);
    let datanet = build(
        3,
        &[
            (owner(1), mine),
            (owner(2), vec![50, 51, 7, 7, 8, 9, 10, 52]),
            // The same owner twice: still one share.
            (owner(2), shared.to_vec()),
        ],
    );
    let a = datanet.attribute(&[1, 2, 3, 4, 99, 7, 7, 8, 9, 10]);
    // Span 1: 1 2 3 4 (owner 1 alone, 4 tokens). Span 2: 7 7 8 9 10 (both owners, 2.5 each).
    assert_eq!(a.spans.len(), 2);
    assert_eq!(a.spans[1].occurrences, 3);
    assert_eq!(a.weights.ppm_of(&owner(1)), 722_222); // 6.5 / 9, largest remainder
    assert_eq!(a.weights.ppm_of(&owner(2)), 277_778); // 2.5 / 9
}

#[test]
fn building_refuses_what_cannot_be_paid_or_indexed() {
    let c = |owner, tokens: Vec<u32>| Contribution { owner, name: "x".into(), tokens };
    assert_eq!(Datanet::build(8, vec![]).unwrap_err(), AttributionError::EmptyDatanet);
    assert_eq!(Datanet::build(0, vec![c(owner(1), vec![1])]).unwrap_err(), AttributionError::ZeroMinSpan);
    assert_eq!(
        Datanet::build(8, vec![c(Address::ZERO, vec![1])]).unwrap_err(),
        AttributionError::ZeroOwner { name: "x".into() }
    );
    assert_eq!(
        Datanet::build(8, vec![c(owner(1), vec![])]).unwrap_err(),
        AttributionError::EmptyContribution { name: "x".into() }
    );
    assert_eq!(
        Datanet::build(8, vec![c(owner(1), vec![1, u32::MAX])]).unwrap_err(),
        AttributionError::ReservedToken { name: "x".into(), position: 1 }
    );
}

#[test]
fn the_commitment_binds_owners_tokens_order_and_min_span_but_not_names() {
    let base = build(4, &[(owner(1), vec![1, 2, 3]), (owner(2), vec![4, 5])]);
    let other_owner = build(4, &[(owner(3), vec![1, 2, 3]), (owner(2), vec![4, 5])]);
    let other_tokens = build(4, &[(owner(1), vec![1, 2, 4]), (owner(2), vec![4, 5])]);
    let other_order = build(4, &[(owner(2), vec![4, 5]), (owner(1), vec![1, 2, 3])]);
    let other_min = build(5, &[(owner(1), vec![1, 2, 3]), (owner(2), vec![4, 5])]);
    for d in [&other_owner, &other_tokens, &other_order, &other_min] {
        assert_ne!(d.root(), base.root());
    }
    let renamed = Datanet::build(
        4,
        vec![
            Contribution { owner: owner(1), name: "renamed".into(), tokens: vec![1, 2, 3] },
            Contribution { owner: owner(2), name: "too".into(), tokens: vec![4, 5] },
        ],
    )
    .unwrap();
    assert_eq!(renamed.root(), base.root());
    // The documented formula.
    let digests = [
        Contribution { owner: owner(1), name: String::new(), tokens: vec![1, 2, 3] }.digest(),
        Contribution { owner: owner(2), name: String::new(), tokens: vec![4, 5] }.digest(),
    ];
    assert_eq!(datanet_root(4, &digests, &[owner(1), owner(2)]), base.root());
}

#[test]
fn a_file_contributed_twice_is_shared_between_its_owners() {
    // A long, highly repetitive text contributed twice: the worst case for suffix sorting
    // (comparison sorting would be quadratic in the repeated length; the index build's
    // speed is measured by the attribution bench, not asserted here).
    let long: Vec<u32> = (0..200_000u32).map(|i| i % 7).collect();
    let datanet = build(8, &[(owner(1), long.clone()), (owner(2), long)]);
    let a = datanet.attribute(&[0, 1, 2, 3, 4, 5, 6, 0, 1, 2]);
    assert_eq!(a.weights.ppm_of(&owner(1)), 500_000);
    assert_eq!(a.weights.ppm_of(&owner(2)), 500_000);
}
