//! # attrinet-p2p
//!
//! The libp2p network of attrinet:
//!
//! - a swarm (TCP + noise + yamux, and QUIC; identify; ping; Kademlia in server mode) whose
//!   identity is the node's ed25519 key, owned by an [`EventLoop`] and driven through a
//!   cloneable [`Client`]; [`new_with_transport`] with [`Transport::Memory`] adds libp2p's
//!   in-process memory transport, metered, for simulating hundreds of nodes in one process
//!   (`benches/scale.rs`, run by `scripts/sim-scale`);
//! - signed model adverts on the gossipsub topic [`ADVERT_TOPIC`], validated before they
//!   are forwarded (accept, reject and penalise, or ignore), building each node's
//!   [`attrinet_market::MarketView`];
//! - the batch protocol [`BATCH_PROTOCOL`]: a provider hands out the co-signed receipts
//!   behind its settlements, so that any watcher can check them;
//! - the inference protocol [`INFER_PROTOCOL`]: a [`Provider`] admits requests within its
//!   [`Limits`], streams tokens from a [`Generator`] and exchanges the receipt (propose,
//!   co-sign, persist, acknowledge); a [`Payer`] ranks providers, checks and co-signs, and
//!   fails over.
//!
//! The rules (ledgers, receipts, selection) are `attrinet-market`'s; this crate moves them.

mod admission;
mod batches;
mod memory;
mod network;
mod payer;
mod provider;
mod slots;
mod sync;
mod wire;

pub use admission::PublisherCheck;
pub use batches::{
    BATCH_PROTOCOL, BatchMsg, BatchRequest, FETCH_DEADLINE, FetchError, FetchTimeouts, FetchedBatch, MAX_BATCH_BYTES,
    MAX_BATCH_RECEIPTS, fetch_batch,
};
pub use libp2p::{Multiaddr, PeerId};
pub use memory::{ByteMeter, Transport};
pub use network::{
    ADVERT_TOPIC, Client, ConnectionBounds, EventLoop, MAX_RELAYS, NatConfig, NetConfig, NetError, OfferTemplate,
    key_peer, new, new_with_transport, peer_key, relay_limits, unix_now,
};
pub use payer::{
    Answer, Ask, Failure, InferError, MAX_ANSWER_TIME, MAX_QUEUE_WAIT, MAX_TOKEN_TEXT_BYTES, Payer, Piece,
    PromptCounter,
};
pub use provider::{
    BoxError, CAPACITY_REFRESH, ChannelLookup, GenerateError, Generated, Generator, Limits, LookupError, Offer,
    Provider, TOKENISERS,
};
pub use sync::VIEW_PROTOCOL;
pub use wire::{
    ChatMessage, ClientMsg, ErrorCode, ErrorReply, INFER_PROTOCOL, InferRequest, Logprobs, MAX_FRAME_BYTES,
    MAX_STOP_BYTES, MAX_STOPS, MAX_TOP_LOGPROBS, Prompt, Resync, Sampling, ServerMsg, TopLogprob, WireError,
    check_stops, read_msg, stop_reached, write_msg,
};
