//! # attrinet-p2p
//!
//! The libp2p network of attrinet. This crate will own:
//!
//! - the swarm (TCP + noise + yamux, QUIC, identify, ping, Kademlia), whose identity is the
//!   node's ed25519 key;
//! - signed `ModelAdvert`s on a gossipsub topic, validated before they are forwarded, and
//!   each node's view of the market built from them;
//! - the inference protocol `/attrinet/infer/1`: request, streamed tokens, and the receipt
//!   exchange of `docs/protocol.md` (propose, co-sign, persist, acknowledge);
//! - a cloneable `Client` handle that sends commands to the `EventLoop` owning the swarm.
//!
//! Rules about money (ledgers, receipts, selection) live in `attrinet-market`; this crate
//! only moves them.
