//! Which publishers' adverts a node takes: where it follows the chain, only nodes registered
//! there (a bond on chain is what a key costs; without the check, keys are free, and enough
//! of them fill every view with valid adverts, shutting honest newcomers out).
//!
//! A lookup is a chain call, so answers are cached ([`REGISTERED_FOR`],
//! [`UNREGISTERED_FOR`]) and lookups are bounded ([`MAX_LOOKUPS`] at once). While a
//! publisher's lookup runs its adverts wait ([`MAX_HELD`] in all, [`MAX_HELD_PER_NODE`] each;
//! gossipsub keeps the messages unforwarded until they are judged); past the bounds they are
//! ignored, and the node's next republish is judged once the answer is cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attrinet_market::{PublicKey, SignedAdvert};
use futures::future::BoxFuture;
use libp2p::PeerId;
use libp2p::gossipsub::MessageId;

/// Answers whether a node key is registered (on chain, for a node that follows one).
pub trait PublisherCheck: Send + Sync + std::fmt::Debug {
    /// Whether `key` belongs to a registered node; `Err` when the answer cannot be had now
    /// (the RPC failed), which is cached briefly and ignores the adverts waiting on it.
    fn registered(&self, key: PublicKey) -> BoxFuture<'static, Result<bool, String>>;
}

/// How long "registered" is believed: a node that unbonds keeps its adverts taken this long.
pub(crate) const REGISTERED_FOR: Duration = Duration::from_secs(600);
/// How long "not registered" is believed: a node that just registered waits this long.
pub(crate) const UNREGISTERED_FOR: Duration = Duration::from_secs(60);
/// How long a failed lookup is believed, before a new advert asks again.
const FAILED_FOR: Duration = Duration::from_secs(10);
/// Lookups at once.
pub(crate) const MAX_LOOKUPS: usize = 32;
/// Adverts waiting on lookups, in all.
pub(crate) const MAX_HELD: usize = 1024;
/// Adverts waiting on one node's lookup.
pub(crate) const MAX_HELD_PER_NODE: usize = 64;
/// Publishers whose answer is cached; past it, expired answers are dropped first, then
/// lookups are not cached (each advert of an unknown node is ignored until room is made).
const MAX_KNOWN: usize = 65_536;

/// An advert waiting on its publisher's lookup, and where it came from.
#[derive(Debug)]
pub(crate) enum Held {
    /// A gossiped message, not yet judged for gossipsub.
    Gossip { source: PeerId, id: MessageId, advert: Box<SignedAdvert> },
    /// Handed over by a view sync.
    Pulled(Box<SignedAdvert>),
}

impl Held {
    pub(crate) fn advert(&self) -> &SignedAdvert {
        match self {
            Held::Gossip { advert, .. } | Held::Pulled(advert) => advert,
        }
    }
}

/// What to do with an advert.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// Judged now: take it if `true`; if not, ignore it without penalising its sender
    /// (registration changes, and a sender cannot know what we believe).
    Now(bool, Held),
    /// It waits for its publisher's lookup; start that (once per publisher) if `start`.
    Waiting { start: bool },
}

#[derive(Debug, Clone, Copy)]
enum Known {
    Registered,
    Unregistered,
    Failed,
}

/// The cache and the waiting adverts.
pub(crate) struct Gate {
    check: Arc<dyn PublisherCheck>,
    known: HashMap<PublicKey, (Known, Instant)>,
    waiting: HashMap<PublicKey, Vec<Held>>,
    held: usize,
}

impl Gate {
    pub(crate) fn new(check: Arc<dyn PublisherCheck>) -> Gate {
        Gate { check, known: HashMap::new(), waiting: HashMap::new(), held: 0 }
    }

    /// The lookup to run for `key` (a future of its answer).
    pub(crate) fn lookup(&self, key: PublicKey) -> BoxFuture<'static, Result<bool, String>> {
        self.check.registered(key)
    }

    /// Judges an advert of `key`: at once if the answer is cached, else holds it (or
    /// ignores it if the bounds are reached).
    pub(crate) fn admit(&mut self, held: Held) -> Admitted {
        let key = held.advert().advert.node_key;
        let now = Instant::now();
        if let Some((known, until)) = self.known.get(&key) {
            if *until > now {
                return Admitted::Now(matches!(known, Known::Registered), held);
            }
            self.known.remove(&key);
        }
        let start = !self.waiting.contains_key(&key);
        let full = self.held >= MAX_HELD
            || (start && self.waiting.len() >= MAX_LOOKUPS)
            || self.waiting.get(&key).is_some_and(|w| w.len() >= MAX_HELD_PER_NODE);
        if full {
            return Admitted::Now(false, held);
        }
        self.waiting.entry(key).or_default().push(held);
        self.held += 1;
        Admitted::Waiting { start }
    }

    /// Records a lookup's answer; returns the adverts that waited on it and whether to take
    /// them.
    pub(crate) fn answered(&mut self, key: PublicKey, answer: &Result<bool, String>) -> (bool, Vec<Held>) {
        let (known, ttl) = match answer {
            Ok(true) => (Known::Registered, REGISTERED_FOR),
            Ok(false) => (Known::Unregistered, UNREGISTERED_FOR),
            Err(_) => (Known::Failed, FAILED_FOR),
        };
        let now = Instant::now();
        if self.known.len() >= MAX_KNOWN {
            self.known.retain(|_, (_, until)| *until > now);
        }
        if self.known.len() < MAX_KNOWN {
            self.known.insert(key, (known, now + ttl));
        }
        let held = self.waiting.remove(&key).unwrap_or_default();
        self.held -= held.len();
        (matches!(known, Known::Registered), held)
    }

    /// Lookups running, adverts waiting.
    #[cfg(test)]
    fn load(&self) -> (usize, usize) {
        (self.waiting.len(), self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nobody;
    impl PublisherCheck for Nobody {
        fn registered(&self, _: PublicKey) -> BoxFuture<'static, Result<bool, String>> {
            Box::pin(async { Ok(false) })
        }
    }

    fn advert(node: u32, seq: u32) -> Held {
        let mut secret = [1; 32];
        secret[..4].copy_from_slice(&node.to_le_bytes());
        let id = attrinet_market::Identity::from_secrets(secret, secret).unwrap();
        let a = attrinet_market::ModelAdvert {
            node_key: id.public_key(),
            evm_address: id.address(),
            model: attrinet_market::ModelId::from([0; 32]),
            model_name: String::new(),
            price: attrinet_market::Price {
                per_1k_input: attrinet_market::Wei(0),
                per_1k_output: attrinet_market::Wei(0),
            },
            context_length: 0,
            free_capacity: 0,
            decode_tokens_per_s: 0,
            ttft_ms: 0,
            cold_start_ms: 0,
            expires_at: 0,
            seq: u64::from(seq),
            addrs: vec![],
        };
        Held::Pulled(Box::new(a.sign(&id.ed25519)))
    }

    fn key(node: u32) -> PublicKey {
        advert(node, 0).advert().advert.node_key
    }

    fn waiting(a: Admitted) -> Option<bool> {
        match a {
            Admitted::Waiting { start } => Some(start),
            Admitted::Now(..) => None,
        }
    }

    fn now(a: Admitted) -> Option<bool> {
        match a {
            Admitted::Now(take, _) => Some(take),
            Admitted::Waiting { .. } => None,
        }
    }

    #[test]
    fn waiting_adverts_and_lookups_are_bounded_and_answers_cached() {
        let mut gate = Gate::new(Arc::new(Nobody));
        // One lookup per publisher, however many of its adverts wait.
        assert_eq!(waiting(gate.admit(advert(0, 0))), Some(true));
        for seq in 1..MAX_HELD_PER_NODE as u32 {
            assert_eq!(waiting(gate.admit(advert(0, seq))), Some(false));
        }
        assert_eq!(now(gate.admit(advert(0, 99))), Some(false), "per-node bound");
        // Lookups at once are bounded.
        for node in 1..MAX_LOOKUPS as u32 {
            assert_eq!(waiting(gate.admit(advert(node, 0))), Some(true));
        }
        assert_eq!(now(gate.admit(advert(1_000, 0))), Some(false), "lookup bound");
        assert_eq!(gate.load(), (MAX_LOOKUPS, MAX_HELD_PER_NODE + MAX_LOOKUPS - 1));
        // Answers release what waited and are cached both ways.
        let (take, held) = gate.answered(key(0), &Ok(true));
        assert!(take);
        assert_eq!(held.len(), MAX_HELD_PER_NODE);
        assert_eq!(now(gate.admit(advert(0, 7))), Some(true));
        let (take, held) = gate.answered(key(1), &Ok(false));
        assert!(!take);
        assert_eq!(held.len(), 1);
        assert_eq!(now(gate.admit(advert(1, 7))), Some(false));
        assert_eq!(gate.load(), (MAX_LOOKUPS - 2, MAX_LOOKUPS - 2));
    }
}
