//! The inference protocol's messages and their framing on a libp2p stream.
//!
//! One stream per request: the client writes an [`InferRequest`]; the provider answers with
//! [`ServerMsg::Queued`] while the request waits for a generation slot (if it must), then
//! [`ServerMsg::Started`], then [`ServerMsg::Token`]s as they are generated, then
//! [`ServerMsg::Propose`]; the client answers [`ClientMsg::Pay`] (co-signed receipt and
//! voucher) or [`ClientMsg::Refuse`]; the provider persists and sends [`ServerMsg::Ack`].
//! Any step may be answered by [`ServerMsg::Error`]. Each frame is a 4-byte little-endian
//! length followed by the message in postcard encoding.

use std::time::Duration;

use attrinet_market::{
    ChannelId, ModelId, ProposedReceipt, Quote, Seq, SignedReceipt, SignedVoucher, Weights, decode, encode,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The inference protocol.
pub const INFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/attrinet/infer/1");

/// Largest frame either side reads: a request with the largest prompt fits with room to
/// spare; anything longer is refused before its body is read.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// One message of a chat.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to run.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text, fed as is.
    Text(String),
    /// Chat messages, formatted with the model's chat template.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// Bytes of text in the prompt (what the prompt-size limit counts).
    pub fn text_len(&self) -> usize {
        match self {
            Prompt::Text(t) => t.len(),
            Prompt::Chat(m) => m.iter().map(|m| m.role.len() + m.content.len()).sum(),
        }
    }

    /// The most input tokens this prompt can count ([`attrinet_market::max_input_tokens`]).
    pub fn max_input_tokens(&self) -> u32 {
        let messages = match self {
            Prompt::Text(_) => 0,
            Prompt::Chat(m) => m.len(),
        };
        attrinet_market::max_input_tokens(self.text_len(), messages)
    }
}

/// Sampling parameters. Integers, so that a request hashes the same everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Sampling {
    /// Temperature × 1000; 0 means greedy.
    pub temperature_milli: u32,
    /// Top-p × 1000; 0 or 1000 means no nucleus cut.
    pub top_p_milli: u32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Report each token's log-probability and those of this many most likely tokens
    /// (at most [`MAX_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: Option<u8>,
}

/// The most alternatives a token's log-probabilities may list.
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// A generated token's log-probability under the model (the log-softmax of its logits),
/// and the most likely tokens' with theirs, most likely first. In millionths of a nat, so
/// that messages stay integers.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Logprobs {
    /// The token's log-probability × 10⁶.
    pub logprob_micros: i32,
    /// The most likely tokens.
    pub top: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Its log-probability × 10⁶.
    pub logprob_micros: i32,
}

impl Logprobs {
    /// A log-probability in millionths (clamped to `i32`; -inf is `i32::MIN`).
    pub fn micros(logprob: f32) -> i32 {
        (f64::from(logprob) * 1e6).round().clamp(f64::from(i32::MIN), 0.0) as i32
    }
}

/// The most stop sequences a request may carry (as OpenAI's API allows).
pub const MAX_STOPS: usize = 4;
/// The longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Why a request's stop sequences are refused, if they are.
pub fn check_stops(stop: &[String]) -> Result<(), String> {
    if stop.len() > MAX_STOPS {
        return Err(format!("{} stop sequences; at most {MAX_STOPS}", stop.len()));
    }
    match stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        Some(s) => Err(format!("a stop sequence of {} bytes; each takes 1 to {MAX_STOP_BYTES}", s.len())),
        None => Ok(()),
    }
}

/// Whether `text` (everything streamed so far) contains one of `stop`, looking only where
/// the newest `piece_len` bytes could have completed one. Provider and payer both apply
/// it to the concatenated token texts, so they agree on the token that ends the answer.
pub fn stop_reached(text: &str, piece_len: usize, stop: &[String]) -> bool {
    stop.iter().any(|s| {
        // A match completed by the newest piece starts at most this far from the end.
        let mut from = text.len().saturating_sub(piece_len.saturating_add(s.len()));
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        text[from..].contains(s.as_str())
    })
}

/// The client's request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InferRequest {
    /// The model.
    pub model: ModelId,
    /// The prompt.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Stop sequences (at most [`MAX_STOPS`], each 1..=[`MAX_STOP_BYTES`] bytes): the
    /// generation ends with the token whose text completes one ([`stop_reached`]), and only
    /// tokens up to that one are billed. The payer refuses any token streamed after it.
    pub stop: Vec<String>,
    /// The channel that pays.
    pub channel: ChannelId,
    /// The quote the client accepted (from the provider's advert).
    pub quote: Quote,
    /// The payer's newest co-signed receipt on the channel, when it cannot know that the
    /// provider holds it (its `Pay` was never acknowledged, or the payer restarted since).
    /// A provider that lacks it takes it in before serving, so that a lost `Pay` does not
    /// leave the two at different seqs for good.
    pub resync: Option<Box<Resync>>,
}

/// A co-signed receipt and its voucher, as the payer stored them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Resync {
    /// The receipt.
    pub receipt: SignedReceipt,
    /// Its voucher.
    pub voucher: SignedVoucher,
}

/// Why a provider refused or stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ErrorCode {
    /// At capacity, or too many requests from this peer: try another provider or later.
    Busy,
    /// The prompt or a frame is over the size limit.
    TooLarge,
    /// The request is malformed or asks for more than the limits allow.
    BadRequest,
    /// This node does not serve that model.
    UnknownModel,
    /// The channel is unknown here or does not belong to the requesting peer.
    UnknownChannel,
    /// The quote does not match this node's offer.
    QuoteRejected,
    /// Serving would pass the unpaid-exposure limit or the deposit.
    Unpaid,
    /// The engine failed.
    Engine,
    /// A step took too long.
    Timeout,
    /// The co-signed receipt or voucher is not valid.
    BadPayment,
    /// Something failed on the provider's side (storage).
    Internal,
}

/// An error reply: a code and a message for humans.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of error.
    pub code: ErrorCode,
    /// What exactly.
    pub message: String,
}

/// Provider → client.
// Messages are decoded one at a time and dropped: the size of the large variant costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Admitted; the prompt counts this many tokens.
    Started {
        /// Prompt tokens.
        input_tokens: u32,
    },
    /// One generated token.
    Token {
        /// Token id.
        id: u32,
        /// Its text.
        text: String,
    },
    /// Generation is over; here is the receipt to co-sign.
    Propose {
        /// The provider-signed receipt.
        proposal: ProposedReceipt,
        /// Seq of the channel's last settlement, where the voucher's batch starts.
        batch_start: Seq,
        /// The attribution weights the receipt's `attribution_root` commits to (empty when
        /// the model has no datanet or nothing matched): they travel with the receipt.
        weights: Weights,
    },
    /// The co-signed receipt is stored durably.
    Ack {
        /// Its seq.
        seq: Seq,
    },
    /// Refused or failed.
    Error(ErrorReply),
    /// Waiting for a generation slot, at about this place in the queue (1: next); repeated
    /// while waiting, before `Started`. Last, so that postcard's variant indices of
    /// the others stay what they were.
    Queued {
        /// Requests at most that go first, this one included.
        position: u32,
    },
    /// The log-probabilities of the `Token` just sent, when the request asked for them.
    Logprobs(Logprobs),
}

/// Client → provider, after a proposal.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClientMsg {
    /// The co-signed receipt and the voucher for it.
    Pay {
        /// Co-signed receipt.
        receipt: SignedReceipt,
        /// Voucher.
        voucher: SignedVoucher,
    },
    /// The client will not sign, and says why.
    Refuse {
        /// Why.
        reason: String,
    },
}

/// A framing or transport failure.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed or closed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The frame is not the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Nothing arrived in time.
    #[error("no message within {0:?}")]
    Timeout(Duration),
}

/// Writes one message.
pub async fn write_msg<T: Serialize>(io: &mut (impl AsyncWrite + Unpin), msg: &T) -> Result<(), WireError> {
    let body = encode(msg);
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one message, waiting at most `timeout`.
pub async fn read_msg<T: DeserializeOwned>(
    io: &mut (impl AsyncRead + Unpin),
    timeout: Duration,
) -> Result<T, WireError> {
    tokio::time::timeout(timeout, async {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        decode(&body).map_err(|e| WireError::Malformed(e.to_string()))
    })
    .await
    .map_err(|_| WireError::Timeout(timeout))?
}
