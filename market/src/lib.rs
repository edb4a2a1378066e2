//! # attrinet-market
//!
//! The rules of attrinet's marketplace, with no network, chain or disk I/O: ids and prices,
//! attribution receipts and their EIP-712 digests, vouchers, the payer's and the provider's
//! channel ledgers, payout splits, Merkle and Merkle-sum trees, and the [`Store`] trait.
//! `docs/protocol.md` is the normative description; this crate implements it. Clocks and
//! keys come in as parameters, so every function here is deterministic.
//!
//! One inference, from quote to stored receipt:
//!
//! ```
//! use attrinet_market::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Identity::from_secrets([1; 32], [2; 32])?;
//! let client = Identity::from_secrets([3; 32], [4; 32])?;
//! let params = ChannelParams {
//!     domain: Domain { chain_id: 31337, verifying_contract: Default::default() },
//!     id: ChannelId::from([9; 32]),
//!     payer: client.address(),
//!     provider: node.address(),
//!     payer_key: client.public_key(),
//!     provider_key: node.public_key(),
//! };
//! let open = ChannelState::open(params, Wei(1_000_000));
//! let mut provider = ProviderChannel::restore(open.clone(), &[], Wei(100_000));
//! let mut payer = PayerChannel::restore(open.clone(), &[]);
//! let (node_store, client_store) = (MemStore::new(), MemStore::new());
//! node_store.put_channel(&open)?;
//! client_store.put_channel(&open)?;
//!
//! let quote = Quote {
//!     model: ModelId::from([7; 32]),
//!     price: Price { per_1k_input: Wei(1_000), per_1k_output: Wei(4_000) },
//!     max_input_tokens: 512,
//!     max_output_tokens: 64,
//! };
//! let request = b"What is the capital of France?";
//! let tokens = [4, 8, 15, 16, 23, 42];
//! let now = 1_700_000_000;
//!
//! // The node admits the request, runs it, and proposes a receipt.
//! let reservation = provider.reserve(quote, Admission::of(&quote))?;
//! let usage = Usage {
//!     request_hash: request_hash(request),
//!     response_hash: response_hash(&tokens),
//!     input_tokens: 9,
//!     output_tokens: tokens.len() as u32,
//!     attribution_root: Default::default(),
//! };
//! let (proposal, batch_start) = provider.propose(reservation, &usage, now, &node)?;
//!
//! // The client checks it against what it sent and received, co-signs, signs a voucher.
//! let delivered =
//!     Delivered::plain(request_hash(request), response_hash(&tokens), tokens.len() as u32, None);
//! let (receipt, voucher) = payer.accept(proposal, batch_start, &quote, &delivered, now, &client)?;
//! let stored = client_store.record_receipt(&receipt, &voucher)?;
//! payer.commit(&stored, &receipt);
//!
//! // The node checks the answer, persists it, and only then acknowledges.
//! provider.check_cosigned(&receipt, &voucher)?;
//! let stored = node_store.record_receipt(&receipt, &voucher)?;
//! provider.commit(&stored, &receipt);
//! assert_eq!(stored.cumulative, Wei(9 + 24)); // 9 × 1000/1000 + 6 × 4000/1000
//! # Ok(()) }
//! ```

// Money is computed here: an unchecked `+`, `-`, `*`, `/` or `%` is a warning (an error in
// scripts/test). Each exception is allowed where it stands, with why it cannot overflow.
#![warn(clippy::arithmetic_side_effects)]

mod advert;
mod attribution;
mod codec;
mod eip712;
mod error;
mod keys;
mod ledger;
mod merkle;
mod payout;
mod receipt;
mod select;
mod split;
mod store;
mod terms;
mod types;
mod voucher;

pub use advert::{
    AdvertError, MAX_ADVERT_ADDRS, MAX_ADVERT_BYTES, MAX_ADVERT_TTL_SECS, MAX_MODEL_NAME, MAX_MODELS_PER_NODE,
    MAX_SEQ_LEAD_SECS, MAX_VIEW_ADVERTS, MarketView, ModelAdvert, SignedAdvert,
};
pub use codec::{decode, encode};
pub use eip712::{DOMAIN_NAME, DOMAIN_VERSION};
/// The EIP-712 structs as alloy `sol!` types, for the contracts' bindings and tests.
pub mod sol {
    pub use crate::eip712::{Receipt, Voucher};
}
pub use attribution::{
    Attribution, AttributionError, Contribution, DEFAULT_MIN_SPAN, DataEntry, Datanet, Document, OutsiderProof,
    PPM_WHOLE, Span, Weight, Weights, datanet_root, owner_digest, owners_root, ppm_of, receipt_data_share,
    run_data_entries, weight_digest,
};
pub use error::{MarketError, VerifyError};
pub use keys::Identity;
pub use ledger::{
    Admission, Delivered, LedgerError, MAX_CLOCK_SKEW_SECS, PayerChannel, ProviderChannel, Quote, Reservation,
    TEMPLATE_TOKENS, TEMPLATE_TOKENS_PER_MESSAGE, Usage, max_input_tokens,
};
pub use merkle::{MerkleProof, MerkleTree, ProofError, SumNode, SumProof, SumTree, leaf_hash};
pub use payout::{
    Beneficiaries, CommittedData, DataClaim, DataCommitment, PayoutError, PayoutRun, Role, contributor_totals,
    payout_runs, payout_totals,
};
pub use receipt::{Ed25519Signature, ProposedReceipt, PublicKey, Receipt, SignedReceipt, request_hash, response_hash};
pub use select::{Demand, ProviderBook, ProviderRecord, rank};
pub use split::{BPS_WHOLE, Payout, Split};
pub use store::{ChannelParams, ChannelState, MemStore, Store, StoreError, StoredReceipt, merge_put};
pub use terms::{TermsHistory, TermsVersion, honest_terms};
pub use types::{ChannelId, Domain, ModelId, Price, Seq, TOKENS_PER_PRICE_UNIT, Wei};
pub use voucher::{EvmSignature, SignedVoucher, Voucher};
