//! Channel ledgers: the payer's and the provider's view of one channel, and the rules each
//! applies before signing or serving (`docs/protocol.md`, "Ledger rules").

use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

use crate::attribution::Weights;
use crate::error::{MarketError, VerifyError};
use crate::keys::Identity;
use crate::merkle::SumTree;
use crate::receipt::{ProposedReceipt, Receipt, SignedReceipt};
use crate::store::{ChannelState, StoredReceipt};
use crate::types::{ModelId, Price, Seq, Wei};
use crate::voucher::{SignedVoucher, Voucher};

/// How far a receipt's timestamp may be from the payer's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// What the client accepted before sending a request: the model, its price, and the most
/// tokens it may be charged for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Quote {
    /// The model.
    pub model: ModelId,
    /// Its price.
    pub price: Price,
    /// Most prompt tokens the request may count.
    pub max_input_tokens: u32,
    /// Most tokens it may generate.
    pub max_output_tokens: u32,
}

impl Quote {
    /// The most a request under this quote can cost.
    pub fn max_value(&self) -> Result<Wei, MarketError> {
        self.price.value(self.max_input_tokens, self.max_output_tokens)
    }
}

/// Tokens a chat template may add to a whole prompt (a BOS, a default system prompt), at
/// most, in [`max_input_tokens`].
pub const TEMPLATE_TOKENS: u32 = 64;
/// Tokens a chat template may add per message (role markers, separators), at most.
pub const TEMPLATE_TOKENS_PER_MESSAGE: u32 = 16;

/// The most input tokens a prompt of `text_bytes` bytes in `messages` chat messages (0 for
/// raw text) can tokenize to: each token of text stands for at least one byte, and a
/// template adds at most [`TEMPLATE_TOKENS`] and [`TEMPLATE_TOKENS_PER_MESSAGE`] per
/// message. A payer quotes at most this, so a provider cannot bill input the prompt could
/// not make, whatever it counts.
pub fn max_input_tokens(text_bytes: usize, messages: usize) -> u32 {
    let text = u32::try_from(text_bytes).unwrap_or(u32::MAX);
    let per_message = u32::try_from(messages).unwrap_or(u32::MAX).saturating_mul(TEMPLATE_TOKENS_PER_MESSAGE);
    text.saturating_add(per_message).saturating_add(TEMPLATE_TOKENS)
}

/// What the payer itself observed of an inference.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delivered {
    /// Hash of the request it sent.
    pub request_hash: B256,
    /// Hash of the tokens it received.
    pub response_hash: B256,
    /// Number of tokens it received.
    pub output_tokens: u32,
    /// Its own count of prompt tokens, if it tokenised the prompt.
    pub input_tokens: Option<u32>,
    /// The attribution weights the provider sent with its proposal (none when it sent
    /// none): they must be the ones the receipt commits to.
    pub weights: Weights,
    /// The weights the payer computed itself for the tokens it received, from the model's
    /// datanet; `None` when it does not hold the datanet (a watcher holding it checks them
    /// later).
    pub expected_weights: Option<Weights>,
}

impl Delivered {
    /// What was delivered without attribution weights.
    pub fn plain(request_hash: B256, response_hash: B256, output_tokens: u32, input_tokens: Option<u32>) -> Delivered {
        Delivered {
            request_hash,
            response_hash,
            output_tokens,
            input_tokens,
            weights: Weights::none(),
            expected_weights: None,
        }
    }
}

/// What a provider knows of a request when it admits it: the model the request names, the
/// price and context length it serves that model at, and how many tokens the request
/// takes (its prompt, counted by the provider's tokenizer) and asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Admission {
    /// The model the request names.
    pub model: ModelId,
    /// The price the provider serves it at.
    pub price: Price,
    /// The model's context length.
    pub context_length: u32,
    /// The prompt's length in tokens.
    pub input_tokens: u32,
    /// The most tokens the request asks to generate.
    pub max_tokens: u32,
}

impl Admission {
    /// The admission of a request that takes exactly what `quote` allows, at its price
    /// (a provider without a context limit: tests and benchmarks).
    pub fn of(quote: &Quote) -> Admission {
        Admission {
            model: quote.model,
            price: quote.price,
            context_length: u32::MAX,
            input_tokens: quote.max_input_tokens,
            max_tokens: quote.max_output_tokens,
        }
    }

    /// The quote narrowed to this request (its prompt, the tokens it asks for), when the
    /// quote is for this offer (model, price, enough output tokens) and the request fits it
    /// and the model's context. [`ProviderChannel::reserve`] applies it; a provider may
    /// also call it first, to refuse before any channel lookup.
    pub fn admit(&self, quote: Quote) -> Result<Quote, LedgerError> {
        let Admission { model, price, context_length, input_tokens, max_tokens } = *self;
        if quote.model != model || quote.price != price || quote.max_output_tokens < max_tokens {
            return Err(LedgerError::QuoteMismatch { quote: Box::new(quote), price, max_tokens });
        }
        if input_tokens > quote.max_input_tokens || input_tokens.saturating_add(max_tokens) > context_length {
            return Err(LedgerError::DoesNotFit {
                input_tokens,
                max_tokens,
                quote_input: quote.max_input_tokens,
                context: context_length,
            });
        }
        Ok(Quote { max_input_tokens: input_tokens, max_output_tokens: max_tokens, ..quote })
    }
}

/// What the provider measured of an inference it ran.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Usage {
    /// Hash of the request received.
    pub request_hash: B256,
    /// Hash of the tokens delivered.
    pub response_hash: B256,
    /// Prompt tokens processed.
    pub input_tokens: u32,
    /// Tokens generated and delivered.
    pub output_tokens: u32,
    /// Merkle root of the attribution weights (zero when none).
    pub attribution_root: B256,
}

/// Why a ledger refused to sign, serve or accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum LedgerError {
    /// A signature does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// Arithmetic failed.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The receipt names another chain, contract, channel, party or key than the channel.
    #[error("receipt is for another channel: its {0} differs")]
    ForeignReceipt(&'static str),
    /// The seq is not the expected next one (a gap, a replay or an old receipt).
    #[error("receipt seq {got}, expected {expected}")]
    WrongSeq {
        /// Expected seq.
        expected: Seq,
        /// Received seq.
        got: Seq,
    },
    /// The receipt bills another model than the quote.
    #[error("receipt bills model {got}, the quote was for {quoted}")]
    WrongModel {
        /// Quoted model.
        quoted: ModelId,
        /// Model on the receipt.
        got: ModelId,
    },
    /// The receipt's prices differ from the quote's.
    #[error("receipt prices {got:?} differ from the quote {quoted:?}")]
    WrongPrice {
        /// Quoted price.
        quoted: Price,
        /// Price on the receipt.
        got: Price,
    },
    /// Token counts exceed the quote or differ from what the payer observed.
    #[error("receipt claims {claimed} {kind} tokens, allowed {allowed}")]
    WrongTokens {
        /// "input" or "output".
        kind: &'static str,
        /// Claimed on the receipt.
        claimed: u32,
        /// What the quote allows or the payer counted.
        allowed: u32,
    },
    /// The request hash is not that of the request sent.
    #[error("receipt request hash differs from the request sent")]
    WrongRequest,
    /// The response hash is not that of the tokens received.
    #[error("receipt response hash differs from the tokens received")]
    WrongResponse,
    /// The value is not exactly the price of the tokens.
    #[error("receipt value {got}, the tokens at the quoted price are worth {expected}")]
    WrongValue {
        /// Exact value.
        expected: Wei,
        /// Claimed value.
        got: Wei,
    },
    /// The cumulative is not previous + value.
    #[error("receipt cumulative {got}, expected {expected}")]
    WrongCumulative {
        /// Previous cumulative + value.
        expected: Wei,
        /// Claimed cumulative.
        got: Wei,
    },
    /// The channel's deposit does not cover the total.
    #[error("channel total {needed} would exceed the deposit {deposit}: top up the channel")]
    DepositExceeded {
        /// Total that would be owed.
        needed: Wei,
        /// The deposit.
        deposit: Wei,
    },
    /// The receipt's timestamp is too far from the payer's clock.
    #[error("receipt timestamp {timestamp} is more than {MAX_CLOCK_SKEW_SECS}s from now ({now})")]
    ClockSkew {
        /// Receipt timestamp.
        timestamp: u64,
        /// Payer's clock.
        now: u64,
    },
    /// Serving would leave more unpaid than the provider's limit for this payer.
    #[error("unpaid exposure {unpaid} plus this request's {requested} would exceed the limit {limit}")]
    ExposureLimit {
        /// Already unpaid (proposed, not co-signed, plus reserved).
        unpaid: Wei,
        /// This request's maximum value.
        requested: Wei,
        /// The limit.
        limit: Wei,
    },
    /// The usage is beyond what was reserved for the request.
    #[error("usage worth {value} exceeds the reservation of {reserved}")]
    ExceedsReservation {
        /// Value of the usage.
        value: Wei,
        /// Reserved.
        reserved: Wei,
    },
    /// A co-signed receipt arrived with no matching proposal.
    #[error("co-signed receipt {seq} does not match the proposal in flight")]
    NotProposed {
        /// Its seq.
        seq: Seq,
    },
    /// A proposal is already waiting for the payer on this channel; receipts are
    /// exchanged one at a time so that seqs stay contiguous.
    #[error("receipt {seq} is still waiting for the payer's signature")]
    ProposalInFlight {
        /// Seq of the proposal in flight.
        seq: Seq,
    },
    /// The voucher does not match the receipt.
    #[error("voucher does not match the receipt: {0} differs")]
    WrongVoucher(&'static str),
    /// The weights sent with a proposal are not the ones its receipt commits to.
    #[error("attribution weights hash to {weights}, the receipt commits to {committed}")]
    WeightsNotCommitted {
        /// Root of the weights sent.
        weights: B256,
        /// The receipt's attribution root.
        committed: B256,
    },
    /// The weights are not what the model's datanet gives for the tokens received.
    #[error("attribution weights are not the datanet's for this output (root {got}, expected {expected})")]
    WrongWeights {
        /// Root of the weights on the receipt.
        got: B256,
        /// Root of the datanet's weights for the output.
        expected: B256,
    },
    /// The quote the request carries is not for this offer: another model, another price,
    /// or fewer output tokens than the request asks for.
    #[error("quote {quote:?} does not match the offer at {price:?} for {max_tokens} new tokens")]
    QuoteMismatch {
        /// The request's quote (boxed: it would make every ledger error large).
        quote: Box<Quote>,
        /// The price the provider serves at.
        price: Price,
        /// The tokens the request asks for.
        max_tokens: u32,
    },
    /// The prompt and the tokens asked for do not fit the quote or the model's context.
    #[error(
        "prompt of {input_tokens} tokens plus {max_tokens} new ones does not fit (quote allows {quote_input}, context {context})"
    )]
    DoesNotFit {
        /// The prompt's tokens.
        input_tokens: u32,
        /// The tokens asked for.
        max_tokens: u32,
        /// Prompt tokens the quote allows.
        quote_input: u32,
        /// The model's context length.
        context: u32,
    },
    /// The voucher commits to another batch than the receipts since the last settlement.
    #[error("voucher receipts root {got} differs from the batch root {expected}")]
    WrongReceiptsRoot {
        /// Root of the batch.
        expected: B256,
        /// Root in the voucher.
        got: B256,
    },
    /// The declared start of the batch is not between the known settlement and the last
    /// receipt.
    #[error("batch start {start} is outside [{settled}, {last}]")]
    BadBatchStart {
        /// Declared start.
        start: Seq,
        /// Settled seq known here.
        settled: Seq,
        /// Last co-signed seq.
        last: Seq,
    },
}

/// A receipt's leaf data in a settlement batch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct BatchLeaf {
    seq: Seq,
    digest: B256,
    value: Wei,
}

impl BatchLeaf {
    fn of(r: &Receipt) -> BatchLeaf {
        BatchLeaf { seq: r.seq, digest: r.digest(), value: r.value }
    }
}

/// The Merkle-sum root over the leaves after `start`, plus `extra`.
fn batch_root(leaves: &[BatchLeaf], start: Seq, extra: &BatchLeaf) -> Result<B256, MarketError> {
    let items: Vec<(B256, Wei)> =
        leaves.iter().chain(std::iter::once(extra)).filter(|l| l.seq > start).map(|l| (l.digest, l.value)).collect();
    Ok(SumTree::new(&items)?.root().hash)
}

fn unsettled_leaves(state: &ChannelState, receipts: &[StoredReceipt]) -> Vec<BatchLeaf> {
    receipts.iter().map(|s| BatchLeaf::of(&s.receipt.receipt)).filter(|l| l.seq > state.settled_seq).collect()
}

/// The client's side of a channel.
#[derive(Clone, Debug)]
pub struct PayerChannel {
    state: ChannelState,
    unsettled: Vec<BatchLeaf>,
}

impl PayerChannel {
    /// Resumes a channel from its stored state and stored receipts after its settlement
    /// (both from a [`crate::Store`]).
    pub fn restore(state: ChannelState, receipts: &[StoredReceipt]) -> PayerChannel {
        let unsettled = unsettled_leaves(&state, receipts);
        PayerChannel { state, unsettled }
    }

    /// The channel's state (what to persist).
    pub fn state(&self) -> &ChannelState {
        &self.state
    }

    /// Checks a proposal against the rules of `docs/protocol.md`; `Ok` means it is safe to
    /// co-sign.
    pub fn check(
        &self,
        proposal: &ProposedReceipt,
        batch_start: Seq,
        quote: &Quote,
        delivered: &Delivered,
        now: u64,
    ) -> Result<(), LedgerError> {
        let r = &proposal.receipt;
        let p = &self.state.params;
        let field = |ok: bool, name| if ok { Ok(()) } else { Err(LedgerError::ForeignReceipt(name)) };
        field(r.domain == p.domain, "domain")?;
        field(r.channel == p.id, "channel")?;
        field(r.payer == p.payer && r.payer_key == p.payer_key, "payer")?;
        field(r.provider == p.provider && r.provider_key == p.provider_key, "provider")?;
        proposal.verify()?;
        let expected = self.state.last_seq.next()?;
        if r.seq != expected {
            return Err(LedgerError::WrongSeq { expected, got: r.seq });
        }
        if r.model != quote.model {
            return Err(LedgerError::WrongModel { quoted: quote.model, got: r.model });
        }
        if r.price != quote.price {
            return Err(LedgerError::WrongPrice { quoted: quote.price, got: r.price });
        }
        let allowed_out = delivered.output_tokens.min(quote.max_output_tokens);
        if r.output_tokens != delivered.output_tokens || r.output_tokens > quote.max_output_tokens {
            return Err(LedgerError::WrongTokens { kind: "output", claimed: r.output_tokens, allowed: allowed_out });
        }
        let allowed_in = delivered.input_tokens.unwrap_or(quote.max_input_tokens).min(quote.max_input_tokens);
        let input_ok = match delivered.input_tokens {
            Some(n) => r.input_tokens == n,
            None => true,
        };
        if !input_ok || r.input_tokens > quote.max_input_tokens {
            return Err(LedgerError::WrongTokens { kind: "input", claimed: r.input_tokens, allowed: allowed_in });
        }
        if r.request_hash != delivered.request_hash {
            return Err(LedgerError::WrongRequest);
        }
        if r.response_hash != delivered.response_hash {
            return Err(LedgerError::WrongResponse);
        }
        let value = quote.price.value(r.input_tokens, r.output_tokens)?;
        if r.value != value {
            return Err(LedgerError::WrongValue { expected: value, got: r.value });
        }
        let cumulative = self.state.cumulative.checked_add(value)?;
        if r.cumulative != cumulative {
            return Err(LedgerError::WrongCumulative { expected: cumulative, got: r.cumulative });
        }
        if cumulative > self.state.deposit {
            return Err(LedgerError::DepositExceeded { needed: cumulative, deposit: self.state.deposit });
        }
        if r.timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
            return Err(LedgerError::ClockSkew { timestamp: r.timestamp, now });
        }
        if batch_start < self.state.settled_seq || batch_start > self.state.last_seq {
            return Err(LedgerError::BadBatchStart {
                start: batch_start,
                settled: self.state.settled_seq,
                last: self.state.last_seq,
            });
        }
        // The payer stores and co-signs these weights: they must be the committed ones, and
        // the datanet's when the payer can tell.
        let weights = delivered.weights.root();
        if weights != r.attribution_root {
            return Err(LedgerError::WeightsNotCommitted { weights, committed: r.attribution_root });
        }
        if let Some(expected) = &delivered.expected_weights
            && *expected != delivered.weights
        {
            return Err(LedgerError::WrongWeights { got: weights, expected: expected.root() });
        }
        Ok(())
    }

    /// Checks the proposal, then co-signs it and signs the voucher for it. The caller
    /// persists the result ([`crate::Store::record_receipt`]) and then calls
    /// [`PayerChannel::commit`]; nothing here changes until then.
    pub fn accept(
        &self,
        proposal: ProposedReceipt,
        batch_start: Seq,
        quote: &Quote,
        delivered: &Delivered,
        now: u64,
        me: &Identity,
    ) -> Result<(SignedReceipt, SignedVoucher), LedgerError> {
        self.check(&proposal, batch_start, quote, delivered, now)?;
        let leaf = BatchLeaf::of(&proposal.receipt);
        let voucher = Voucher {
            domain: self.state.params.domain,
            channel: self.state.params.id,
            seq: leaf.seq,
            cumulative: proposal.receipt.cumulative,
            receipts_root: batch_root(&self.unsettled, batch_start, &leaf)?,
        };
        Ok((proposal.cosign(&me.ed25519), voucher.sign(&me.evm)))
    }

    /// Advances the ledger past a receipt once it is stored.
    pub fn commit(&mut self, stored: &ChannelState, receipt: &SignedReceipt) {
        self.unsettled.push(BatchLeaf::of(&receipt.receipt));
        self.state = stored.clone();
    }

    /// Takes in a settlement or a new deposit from the stored state (`Store::mark_settled`,
    /// `Store::put_channel`), so that the next voucher's batch starts after the settled seq.
    /// A stored state at another receipt than this ledger's (a write in flight) is ignored.
    pub fn settled(&mut self, state: &ChannelState) {
        if state.last_seq != self.state.last_seq {
            return;
        }
        self.unsettled.retain(|l| l.seq > state.settled_seq);
        self.state = state.clone();
    }
}

/// A claim on part of a provider's exposure limit for one request in flight. Not `Clone`:
/// each is used once, by [`ProviderChannel::propose`] or [`ProviderChannel::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    quote: Quote,
    amount: Wei,
}

impl Reservation {
    /// The quote the request was admitted under.
    pub fn quote(&self) -> &Quote {
        &self.quote
    }
}

/// The node's side of a channel.
///
/// Receipts are exchanged one at a time: at most one proposal waits for the payer. If the
/// payer never answers, [`ProviderChannel::abandon`] writes the proposal off: its seq is
/// reused by the next receipt, and its value keeps counting as unpaid exposure, so a payer
/// that does not co-sign runs into the limit and is refused.
#[derive(Clone, Debug)]
pub struct ProviderChannel {
    state: ChannelState,
    limit: Wei,
    unsettled: Vec<BatchLeaf>,
    pending: Option<ProposedReceipt>,
    reserved: Wei,
    written_off: Wei,
}

impl ProviderChannel {
    /// Resumes a channel from its stored state and receipts, with an exposure limit: the
    /// most value this node serves to the payer without a co-signed receipt.
    pub fn restore(state: ChannelState, receipts: &[StoredReceipt], limit: Wei) -> ProviderChannel {
        let unsettled = unsettled_leaves(&state, receipts);
        ProviderChannel { state, limit, unsettled, pending: None, reserved: Wei::ZERO, written_off: Wei::ZERO }
    }

    /// The channel's state.
    pub fn state(&self) -> &ChannelState {
        &self.state
    }

    /// Value this ledger wrote off since it was restored (proposals unanswered, answers cut
    /// off by a hang-up).
    pub fn written_off(&self) -> Wei {
        self.written_off
    }

    /// Value served but not co-signed: the proposal in flight, proposals written off, and
    /// outstanding reservations.
    pub fn unpaid(&self) -> Result<Wei, LedgerError> {
        let pending = self.pending.as_ref().map_or(Wei::ZERO, |p| p.receipt.value);
        Ok(self.reserved.checked_add(self.written_off)?.checked_add(pending)?)
    }

    /// The proposal waiting for the payer, if any.
    pub fn pending(&self) -> Option<&ProposedReceipt> {
        self.pending.as_ref()
    }

    /// Admits a request under `quote` ([`Admission::admit`]: the quote must be for this
    /// offer and the request must fit it). The reservation is for what the request can cost
    /// at most (its prompt, the tokens it asks for), and only when that fits both the
    /// exposure limit and the deposit; it holds that value until the receipt is proposed.
    pub fn reserve(&mut self, quote: Quote, request: Admission) -> Result<Reservation, LedgerError> {
        self.reserve_with(quote, request, Wei::ZERO)
    }

    /// [`ProviderChannel::reserve`], counting also `elsewhere`: what the same payer left
    /// unpaid outside this ledger (on its other channels, or before a restart). The
    /// exposure limit is the payer's: more channels must not widen it.
    pub fn reserve_with(
        &mut self,
        quote: Quote,
        request: Admission,
        elsewhere: Wei,
    ) -> Result<Reservation, LedgerError> {
        let quote = request.admit(quote)?;
        let requested = quote.max_value()?;
        let unpaid = self.unpaid()?.checked_add(elsewhere)?;
        let exposure = unpaid.checked_add(requested)?;
        if exposure > self.limit {
            return Err(LedgerError::ExposureLimit { unpaid, requested, limit: self.limit });
        }
        let needed = self.state.cumulative.checked_add(exposure)?;
        if needed > self.state.deposit {
            return Err(LedgerError::DepositExceeded { needed, deposit: self.state.deposit });
        }
        self.reserved = self.reserved.checked_add(requested)?;
        Ok(Reservation { quote, amount: requested })
    }

    /// Gives back a reservation whose request produced nothing billable.
    pub fn release(&mut self, reservation: Reservation) {
        // Cannot underflow: `reserved` is the sum of outstanding reservations.
        #[allow(clippy::arithmetic_side_effects)]
        let reserved = Wei(self.reserved.0 - reservation.amount.0);
        self.reserved = reserved;
    }

    /// Ends a reservation whose payer hung up after `output_tokens` were sent, before any
    /// receipt: their value with the prompt's (at the reserved quote's price, at most the
    /// reservation) counts as unpaid from now on, as a proposal written off does, so that
    /// hanging up before the receipt does not take answers for free. Returns that value.
    pub fn cut_off(
        &mut self,
        reservation: Reservation,
        input_tokens: u32,
        output_tokens: u32,
    ) -> Result<Wei, LedgerError> {
        let served = reservation.quote.price.value(input_tokens, output_tokens)?.min(reservation.amount);
        let written_off = self.written_off.checked_add(served)?;
        self.release(reservation);
        self.written_off = written_off;
        Ok(served)
    }

    /// Turns a reservation into a signed receipt proposal for the actual usage. Returns the
    /// proposal and the batch start the payer must build its voucher's root from. On error
    /// the reservation is released.
    pub fn propose(
        &mut self,
        reservation: Reservation,
        usage: &Usage,
        now: u64,
        me: &Identity,
    ) -> Result<(ProposedReceipt, Seq), LedgerError> {
        let result = self.make_proposal(&reservation, usage, now, me);
        self.release(reservation);
        let proposal = result?;
        self.pending = Some(proposal.clone());
        Ok((proposal, self.state.settled_seq))
    }

    fn make_proposal(
        &self,
        reservation: &Reservation,
        usage: &Usage,
        now: u64,
        me: &Identity,
    ) -> Result<ProposedReceipt, LedgerError> {
        if let Some(p) = &self.pending {
            return Err(LedgerError::ProposalInFlight { seq: p.receipt.seq });
        }
        let quote = reservation.quote;
        if usage.output_tokens > quote.max_output_tokens {
            return Err(LedgerError::WrongTokens {
                kind: "output",
                claimed: usage.output_tokens,
                allowed: quote.max_output_tokens,
            });
        }
        if usage.input_tokens > quote.max_input_tokens {
            return Err(LedgerError::WrongTokens {
                kind: "input",
                claimed: usage.input_tokens,
                allowed: quote.max_input_tokens,
            });
        }
        let value = quote.price.value(usage.input_tokens, usage.output_tokens)?;
        if value > reservation.amount {
            return Err(LedgerError::ExceedsReservation { value, reserved: reservation.amount });
        }
        let p = &self.state.params;
        let receipt = Receipt {
            domain: p.domain,
            channel: p.id,
            seq: self.state.last_seq.next()?,
            payer: p.payer,
            provider: p.provider,
            payer_key: p.payer_key,
            provider_key: p.provider_key,
            model: quote.model,
            request_hash: usage.request_hash,
            response_hash: usage.response_hash,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            price: quote.price,
            value,
            cumulative: self.state.cumulative.checked_add(value)?,
            attribution_root: usage.attribution_root,
            timestamp: now,
        };
        Ok(receipt.propose(&me.ed25519))
    }

    /// Writes off the proposal in flight: the payer did not answer. Its seq will be reused;
    /// its value stays counted as unpaid. Returns that value (zero with nothing in flight).
    pub fn abandon(&mut self) -> Result<Wei, LedgerError> {
        let Some(p) = self.pending.as_ref() else { return Ok(Wei::ZERO) };
        let value = p.receipt.value;
        self.written_off = self.written_off.checked_add(value)?;
        self.pending = None;
        Ok(value)
    }

    /// Checks the payer's answer to the proposal in flight: exactly that receipt with a
    /// valid payer signature, and a voucher from the payer for its seq, cumulative and batch.
    /// Nothing changes here: persist, then [`ProviderChannel::commit`], then acknowledge.
    pub fn check_cosigned(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<(), LedgerError> {
        let pending = self.pending.as_ref().ok_or(LedgerError::NotProposed { seq: receipt.receipt.seq })?;
        if receipt.receipt != pending.receipt || receipt.provider_sig != pending.provider_sig {
            return Err(LedgerError::NotProposed { seq: receipt.receipt.seq });
        }
        receipt.verify()?;
        self.check_voucher(receipt, voucher)
    }

    /// Checks a co-signed receipt the payer holds and this ledger may lack: one whose `Pay`
    /// was lost, so that this ledger wrote its proposal off and would propose its seq again.
    /// `Ok(false)`: this ledger already holds that seq (nothing to do). `Ok(true)`: it is the
    /// channel's next receipt, signed by this provider's key and co-signed by the payer's,
    /// with the payer's voucher for it: persist it, then [`ProviderChannel::commit`]. Its
    /// value stays written off (the payer's limit is not given back).
    pub fn check_resync(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<bool, LedgerError> {
        let r = &receipt.receipt;
        if r.seq <= self.state.last_seq {
            return Ok(false);
        }
        if self.pending.is_some() || r.seq != self.state.last_seq.next()? {
            return Err(LedgerError::NotProposed { seq: r.seq });
        }
        let p = &self.state.params;
        if r.domain != p.domain || r.channel != p.id {
            return Err(LedgerError::ForeignReceipt("channel"));
        }
        if r.payer != p.payer
            || r.provider != p.provider
            || r.payer_key != p.payer_key
            || r.provider_key != p.provider_key
        {
            return Err(LedgerError::ForeignReceipt("parties"));
        }
        receipt.verify()?;
        if r.cumulative != self.state.cumulative.checked_add(r.value)? {
            return Err(LedgerError::NotProposed { seq: r.seq });
        }
        self.check_voucher(receipt, voucher)?;
        Ok(true)
    }

    /// The payer's voucher for `receipt`: this channel, its seq and cumulative, the root of
    /// the batch from the settled seq to it, signed by the payer.
    fn check_voucher(&self, receipt: &SignedReceipt, voucher: &SignedVoucher) -> Result<(), LedgerError> {
        let v = &voucher.voucher;
        if v.domain != self.state.params.domain || v.channel != self.state.params.id {
            return Err(LedgerError::WrongVoucher("channel"));
        }
        if v.seq != receipt.receipt.seq {
            return Err(LedgerError::WrongVoucher("seq"));
        }
        if v.cumulative != receipt.receipt.cumulative {
            return Err(LedgerError::WrongVoucher("cumulative"));
        }
        let expected = batch_root(&self.unsettled, self.state.settled_seq, &BatchLeaf::of(&receipt.receipt))?;
        if v.receipts_root != expected {
            return Err(LedgerError::WrongReceiptsRoot { expected, got: v.receipts_root });
        }
        voucher.verify(self.state.params.payer)?;
        Ok(())
    }

    /// Advances past the proposal in flight once its co-signed receipt is stored.
    pub fn commit(&mut self, stored: &ChannelState, receipt: &SignedReceipt) {
        if self.pending.as_ref().is_some_and(|p| p.receipt == receipt.receipt) {
            self.pending = None;
        }
        self.unsettled.push(BatchLeaf::of(&receipt.receipt));
        self.state = stored.clone();
    }

    /// Takes in a settlement or a new deposit from the stored state (`Store::mark_settled`,
    /// `Store::put_channel`), so that the next voucher's batch starts after the settled seq.
    /// A stored state at another receipt than this ledger's (a write in flight) is ignored.
    pub fn settled(&mut self, state: &ChannelState) {
        if state.last_seq != self.state.last_seq {
            return;
        }
        self.unsettled.retain(|l| l.seq > state.settled_seq);
        self.state = state.clone();
    }
}
