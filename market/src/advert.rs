//! Model adverts: what a node offers, signed with its ed25519 (libp2p identity) key, and
//! each participant's view of the market built from the adverts it accepted.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{decode, encode};
use crate::receipt::{Ed25519Signature, PublicKey};
use crate::types::{ModelId, Price};

/// Largest encoded signed advert accepted, in bytes. A real one is ~250 bytes; the bound
/// keeps a peer from filling memory and bandwidth through gossip.
pub const MAX_ADVERT_BYTES: usize = 1024;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME: usize = 128;
/// Most network addresses an advert may carry.
pub const MAX_ADVERT_ADDRS: usize = 4;
/// Longest lifetime an advert may claim, in seconds: nodes republish well before this.
pub const MAX_ADVERT_TTL_SECS: u64 = 600;
/// Most models a view holds adverts for from one node: a node serving more is refused (and
/// its publisher penalised), so that one key cannot fill a view with valid adverts.
pub const MAX_MODELS_PER_NODE: usize = 64;
/// Most adverts a view holds in all (about 4 MiB of them). A full view refuses adverts for
/// a node and model it does not hold, without penalty, until some expire; updates of what it
/// holds are always taken.
pub const MAX_VIEW_ADVERTS: usize = 16_384;
/// How far an advert's seq may run ahead of the clock, in seconds. Nodes number adverts
/// from the Unix time and add one per publish, so an honest seq is at most a little ahead;
/// the bound makes each new seq cost a node time: over any stretch, at most one update a
/// second per model gets through on average, however fast a node publishes, and a seq
/// near `u64::MAX` (which would make every later honest advert stale) is refused.
pub const MAX_SEQ_LEAD_SECS: u64 = 600;

/// Domain separation for advert signatures, so no other signed attrinet message can be
/// replayed as an advert.
const ADVERT_DOMAIN: &[u8] = b"attrinet/advert/v1";

/// What a node offers for one model.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ModelAdvert {
    /// The node's ed25519 key, which is also its libp2p identity.
    pub node_key: PublicKey,
    /// The node's EVM address (where it is paid).
    pub evm_address: Address,
    /// The model.
    pub model: ModelId,
    /// Human-readable model name.
    pub model_name: String,
    /// Price per 1,000 input and output tokens.
    pub price: Price,
    /// Context length, in tokens.
    pub context_length: u32,
    /// Requests it can take now.
    pub free_capacity: u32,
    /// Measured decode speed, tokens per second.
    pub decode_tokens_per_s: u32,
    /// Measured time to first token, milliseconds.
    pub ttft_ms: u32,
    /// Time to load the model before a first request can start, milliseconds: 0 while it
    /// is loaded, else what loading it took (a node that holds several models loads them
    /// on demand). Ranking adds it to the time to first token.
    pub cold_start_ms: u32,
    /// Unix seconds after which the advert is void.
    pub expires_at: u64,
    /// Increases with every new advert of this node for this model.
    pub seq: u64,
    /// Where the node can be reached (multiaddrs as text, at most [`MAX_ADVERT_ADDRS`]).
    /// Signed with the rest, so a client can dial a provider it knows only from gossip
    /// without trusting whoever relayed the advert.
    pub addrs: Vec<String>,
}

/// An advert with its node's signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedAdvert {
    /// The advert.
    pub advert: ModelAdvert,
    /// ed25519 signature of the node over [`ModelAdvert::digest`].
    pub signature: Ed25519Signature,
}

/// Why an advert was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AdvertError {
    /// Larger than [`MAX_ADVERT_BYTES`].
    #[error("advert is {0} bytes, the limit is {MAX_ADVERT_BYTES}")]
    TooLarge(usize),
    /// The bytes are not an advert.
    #[error("advert does not decode: {0}")]
    Malformed(String),
    /// More than [`MAX_ADVERT_ADDRS`] addresses.
    #[error("advert carries {0} addresses, the limit is {MAX_ADVERT_ADDRS}")]
    TooManyAddrs(usize),
    /// Model name longer than [`MAX_MODEL_NAME`].
    #[error("model name is {0} bytes, the limit is {MAX_MODEL_NAME}")]
    NameTooLong(usize),
    /// The signature does not verify under the advert's node key.
    #[error("advert signature does not verify under its node key")]
    BadSignature,
    /// The advert's node key is not the key of the peer that published it.
    #[error("advert claims another node than the peer that published it")]
    WrongPublisher,
    /// Expired (or a replay of an expired one).
    #[error("advert expired at {expires_at}, now is {now}")]
    Expired {
        /// Its expiry.
        expires_at: u64,
        /// Our clock.
        now: u64,
    },
    /// Claims to live longer than [`MAX_ADVERT_TTL_SECS`].
    #[error("advert expires at {expires_at}, more than {MAX_ADVERT_TTL_SECS}s after now ({now})")]
    TooLongLived {
        /// Its expiry.
        expires_at: u64,
        /// Our clock.
        now: u64,
    },
    /// The node already has [`MAX_MODELS_PER_NODE`] models in the view.
    #[error("node already advertises {held} models, the limit is {MAX_MODELS_PER_NODE}")]
    TooManyModels {
        /// Models held for it.
        held: usize,
    },
    /// The view holds [`MAX_VIEW_ADVERTS`] adverts.
    #[error("the market view is full ({held} adverts); new nodes' adverts wait for old ones to expire")]
    ViewFull {
        /// Adverts held.
        held: usize,
    },
    /// The seq runs more than [`MAX_SEQ_LEAD_SECS`] ahead of the clock.
    #[error("advert seq {seq} runs more than {MAX_SEQ_LEAD_SECS}s ahead of now ({now})")]
    SeqAhead {
        /// Its seq.
        seq: u64,
        /// Our clock.
        now: u64,
    },
    /// The node is not registered on chain (where the node that judges checks).
    #[error("the advert's node is not registered on chain")]
    Unregistered,
    /// Not newer than the last advert seen from that node for that model.
    #[error("advert seq {got} is not newer than {last}")]
    Stale {
        /// Last seq seen.
        last: u64,
        /// This advert's seq.
        got: u64,
    },
}

impl AdvertError {
    /// Whether the sender should be penalised: everything but staleness, which honest
    /// reordering in gossip also produces, and a full view or a publisher not (or no longer,
    /// or not yet) registered, which an honest sender cannot know of.
    pub fn penalise(&self) -> bool {
        !matches!(self, AdvertError::Stale { .. } | AdvertError::ViewFull { .. } | AdvertError::Unregistered)
    }
}

impl ModelAdvert {
    /// What the node signs: SHA-256 of a domain tag and the advert's encoding.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(ADVERT_DOMAIN);
        h.update(encode(self));
        h.finalize().into()
    }

    /// Signs the advert with the node's key (which must be `node_key`'s secret).
    pub fn sign(self, key: &SigningKey) -> SignedAdvert {
        let signature = Ed25519Signature(key.sign(&self.digest()).to_bytes());
        SignedAdvert { advert: self, signature }
    }
}

impl SignedAdvert {
    /// Decodes and checks an advert received from `publisher` (the ed25519 key of the peer
    /// that published it), at time `now`. Staleness is the view's job.
    pub fn from_gossip(bytes: &[u8], publisher: &PublicKey, now: u64) -> Result<SignedAdvert, AdvertError> {
        let signed = SignedAdvert::from_bytes(bytes, now)?;
        if signed.advert.node_key != *publisher {
            return Err(AdvertError::WrongPublisher);
        }
        Ok(signed)
    }

    /// Decodes and checks an advert whatever peer handed it over (a view sync, where the
    /// peer passes on others' adverts): it must be signed by the node it names, unexpired
    /// and within bounds. Staleness is the view's job.
    pub fn from_bytes(bytes: &[u8], now: u64) -> Result<SignedAdvert, AdvertError> {
        if bytes.len() > MAX_ADVERT_BYTES {
            return Err(AdvertError::TooLarge(bytes.len()));
        }
        let signed: SignedAdvert = decode(bytes).map_err(|e| AdvertError::Malformed(e.to_string()))?;
        let a = &signed.advert;
        if a.model_name.len() > MAX_MODEL_NAME {
            return Err(AdvertError::NameTooLong(a.model_name.len()));
        }
        if a.addrs.len() > MAX_ADVERT_ADDRS {
            return Err(AdvertError::TooManyAddrs(a.addrs.len()));
        }
        let key = VerifyingKey::from_bytes(&a.node_key.0).map_err(|_| AdvertError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signed.signature.0);
        key.verify_strict(&a.digest(), &sig).map_err(|_| AdvertError::BadSignature)?;
        if a.expires_at <= now {
            return Err(AdvertError::Expired { expires_at: a.expires_at, now });
        }
        if a.expires_at > now.saturating_add(MAX_ADVERT_TTL_SECS) {
            return Err(AdvertError::TooLongLived { expires_at: a.expires_at, now });
        }
        if a.seq > now.saturating_add(MAX_SEQ_LEAD_SECS) {
            return Err(AdvertError::SeqAhead { seq: a.seq, now });
        }
        Ok(signed)
    }
}

/// Which nodes offer which models, now: the adverts accepted, newest per (node, model).
#[derive(Clone, Debug, Default)]
pub struct MarketView {
    adverts: BTreeMap<(PublicKey, ModelId), SignedAdvert>,
}

impl MarketView {
    /// An empty view.
    pub fn new() -> MarketView {
        MarketView::default()
    }

    /// Takes a checked advert if it is newer than what we hold for its node and model, and,
    /// for a node and model not held yet, if the node has fewer than
    /// [`MAX_MODELS_PER_NODE`] models here and the view fewer than [`MAX_VIEW_ADVERTS`].
    pub fn insert(&mut self, advert: SignedAdvert) -> Result<(), AdvertError> {
        let key = (advert.advert.node_key, advert.advert.model);
        match self.adverts.get(&key) {
            Some(old) if advert.advert.seq <= old.advert.seq => {
                return Err(AdvertError::Stale { last: old.advert.seq, got: advert.advert.seq });
            }
            Some(_) => {}
            None => {
                let node = advert.advert.node_key;
                let held =
                    self.adverts.range((node, ModelId::from([0; 32]))..=(node, ModelId::from([0xff; 32]))).count();
                if held >= MAX_MODELS_PER_NODE {
                    return Err(AdvertError::TooManyModels { held });
                }
                if self.adverts.len() >= MAX_VIEW_ADVERTS {
                    return Err(AdvertError::ViewFull { held: self.adverts.len() });
                }
            }
        }
        self.adverts.insert(key, advert);
        Ok(())
    }

    /// Forgets adverts that have expired by `now`.
    pub fn expire(&mut self, now: u64) {
        self.adverts.retain(|_, a| a.advert.expires_at > now);
    }

    /// Every unexpired advert with its signature: what a view sync hands a peer.
    pub fn signed(&self, now: u64) -> Vec<SignedAdvert> {
        self.adverts.values().filter(|a| a.advert.expires_at > now).cloned().collect()
    }

    /// The advert held for `node` and `model`.
    pub fn get(&self, node: &PublicKey, model: &ModelId) -> Option<&SignedAdvert> {
        self.adverts.get(&(*node, *model))
    }

    /// Unexpired adverts for `model`.
    pub fn offers(&self, model: &ModelId, now: u64) -> Vec<ModelAdvert> {
        self.adverts.values().map(|a| &a.advert).filter(|a| a.model == *model && a.expires_at > now).cloned().collect()
    }

    /// Every unexpired advert.
    pub fn all(&self, now: u64) -> Vec<ModelAdvert> {
        self.adverts.values().map(|a| &a.advert).filter(|a| a.expires_at > now).cloned().collect()
    }

    /// Unexpired adverts whose model id or name matches `query` (a hex id, or a name).
    pub fn find(&self, query: &str, now: u64) -> Vec<ModelAdvert> {
        let q = query.trim_start_matches("0x").to_ascii_lowercase();
        self.all(now)
            .into_iter()
            .filter(|a| a.model_name == query || alloy_primitives::hex::encode(a.model.as_bytes()) == q)
            .collect()
    }
}
