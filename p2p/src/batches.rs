//! `/attrinet/batch/1`: a provider hands out the co-signed receipts (and their attribution
//! weights) behind its settlements, so that any watcher, not only the payer, can check a
//! settlement within its challenge window. The receipts are signed by both parties and
//! must hash to the root on chain, so a provider cannot answer with anything but the
//! truth; it can only refuse, which leaves the settlement unchecked (and the payer, who
//! holds the receipts too, still able to dispute).
//!
//! One stream per request (at most MAX_CONCURRENT answered at once, the rest told "busy"):
//! the watcher writes a [`BatchRequest`]; the provider answers with
//! [`BatchMsg::Receipts`] and [`BatchMsg::Weights`] frames, then [`BatchMsg::End`], or with
//! [`BatchMsg::Error`].

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use attrinet_market::{ChannelId, Seq, SignedReceipt, Store, Weights};
use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::network::{Client, NetError};
use crate::wire::{ErrorCode, ErrorReply, WireError, read_msg, write_msg};

/// The batch protocol.
pub const BATCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/attrinet/batch/1");

/// Most receipts one request may ask for: a settlement's batch is bounded by how often a
/// node settles; this bounds what one request costs the provider.
pub const MAX_BATCH_RECEIPTS: u64 = 100_000;

/// Frames are filled up to this many bytes of encoded items: half the frame limit, which
/// leaves room for the frame's own encoding.
const FRAME_FILL: usize = crate::wire::MAX_FRAME_BYTES / 2;

/// Batch requests answered at once by one node; more are refused as busy. Each reads up to
/// MAX_BATCH_RECEIPTS receipts from the store.
const MAX_CONCURRENT: usize = 4;

/// The watcher's request: the channel's receipts with seq in `(after, upto]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The channel.
    pub channel: ChannelId,
    /// The seq the batch starts after (the chain's settled seq before the settlement).
    pub after: Seq,
    /// The settled voucher's seq.
    pub upto: Seq,
}

/// Provider → watcher.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BatchMsg {
    /// The next receipts, in seq order.
    Receipts(Vec<SignedReceipt>),
    /// Weights of receipts with a non-zero attribution root.
    Weights(Vec<Weights>),
    /// That was all.
    End,
    /// Refused.
    Error(ErrorReply),
}

/// What a provider handed out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchedBatch {
    /// The receipts, in seq order.
    pub receipts: Vec<SignedReceipt>,
    /// Their weights (one per distinct non-zero root the provider has).
    pub weights: Vec<Weights>,
}

/// Why fetching a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The stream could not be opened.
    #[error("cannot reach the provider: {0}")]
    Unreachable(#[from] NetError),
    /// The stream failed, timed out or carried nonsense.
    #[error("batch stream: {0}")]
    Wire(#[from] WireError),
    /// The provider refused.
    #[error("provider refused ({:?}): {}", .0.code, .0.message)]
    Refused(ErrorReply),
    /// The whole fetch took longer than its deadline.
    #[error("no whole batch within {0:?}")]
    Deadline(Duration),
    /// The provider sent more than was asked for.
    #[error("provider sent {0} receipts for a batch of at most {1}")]
    TooMany(usize, u64),
    /// The batch asked for is larger than a request may ask ([`MAX_BATCH_RECEIPTS`]),
    /// whatever the settled voucher claims; no provider answers it.
    #[error("a batch of {0} receipts is more than one request may ask for ({MAX_BATCH_RECEIPTS})")]
    Oversized(u64),
    /// The provider sent weights that no receipt of the batch commits to, or sent them twice.
    #[error("provider sent weights (root {0}) that no receipt of the batch commits to, or twice")]
    UnaskedWeights(alloy_primitives::B256),
    /// The provider sent more bytes than any batch takes.
    #[error("provider sent over {MAX_BATCH_BYTES} bytes for one batch")]
    OverBudget,
}

/// Serves batch requests from `store` until the network stops.
pub(crate) async fn serve_batches(
    network: Client,
    store: Arc<dyn Store>,
    me: alloy_primitives::Address,
    idle: Duration,
) {
    let Ok(mut incoming) = network.streams().accept(BATCH_PROTOCOL) else { return };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    while let Some((peer, mut stream)) = incoming.next().await {
        let store = store.clone();
        let slot = slots.clone().try_acquire_owned();
        tokio::spawn(async move {
            let reply = match slot {
                Err(_) => ErrorReply {
                    code: ErrorCode::Busy,
                    message: format!("{MAX_CONCURRENT} batch requests are being answered"),
                },
                // A slot is held for at most the fetch deadline, and each write for at most
                // the idle timeout: a client that never reads cannot keep it.
                Ok(_slot) => {
                    match tokio::time::timeout(FETCH_DEADLINE, answer(&mut stream, store.as_ref(), me, idle)).await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(_) => ErrorReply {
                            code: ErrorCode::Timeout,
                            message: format!("the batch was not taken within {FETCH_DEADLINE:?}"),
                        },
                    }
                }
            };
            debug!(target: "p2p::batch", %peer, code = ?reply.code, message = %reply.message, "batch request refused");
            let _ = tokio::time::timeout(idle, write_msg(&mut stream, &BatchMsg::Error(reply))).await;
        });
    }
}

/// Writes `msg`, waiting at most `idle` for the client to take it.
async fn send(stream: &mut libp2p::Stream, msg: &BatchMsg, idle: Duration) -> Result<(), ErrorReply> {
    match tokio::time::timeout(idle, write_msg(stream, msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ErrorReply { code: ErrorCode::Internal, message: e.to_string() }),
        Err(_) => Err(ErrorReply { code: ErrorCode::Timeout, message: format!("a frame not taken within {idle:?}") }),
    }
}

async fn answer(
    stream: &mut libp2p::Stream,
    store: &dyn Store,
    me: alloy_primitives::Address,
    idle: Duration,
) -> Result<(), ErrorReply> {
    let err = |code, message: String| ErrorReply { code, message };
    let req: BatchRequest = read_msg(stream, idle).await.map_err(|e| err(ErrorCode::BadRequest, e.to_string()))?;
    if req.upto <= req.after || req.upto.0 - req.after.0 > MAX_BATCH_RECEIPTS {
        return Err(err(ErrorCode::BadRequest, format!("ask for 1..={MAX_BATCH_RECEIPTS} receipts after a seq")));
    }
    let internal = |e: attrinet_market::StoreError| err(ErrorCode::Internal, e.to_string());
    match store.channel(&req.channel).map_err(internal)? {
        Some(c) if c.params.provider == me => {}
        _ => return Err(err(ErrorCode::UnknownChannel, format!("channel {} is not served here", req.channel))),
    }
    // Read exactly the range asked for, one receipt at a time, stopping at the first gap.
    let mut receipts: Vec<SignedReceipt> = Vec::new();
    for seq in req.after.0 + 1..=req.upto.0 {
        match store.receipt(&req.channel, Seq(seq)).map_err(internal)? {
            Some(r) => receipts.push(r.receipt),
            None => break,
        }
    }
    for chunk in by_size(&receipts) {
        send(stream, &BatchMsg::Receipts(chunk.to_vec()), idle).await?;
    }
    let roots: BTreeSet<_> = receipts.iter().map(|r| r.receipt.attribution_root).filter(|r| !r.is_zero()).collect();
    let mut weights = Vec::new();
    for root in roots {
        if let Some(w) = store.weights(&root).map_err(internal)? {
            weights.push(w);
        }
    }
    for chunk in by_size(&weights) {
        send(stream, &BatchMsg::Weights(chunk.to_vec()), idle).await?;
    }
    send(stream, &BatchMsg::End, idle).await
}

/// Splits `items` into runs whose encodings add up to at most FRAME_FILL bytes (an item
/// larger than that goes alone, and the frame limit then refuses it with a clear error).
fn by_size<T: Serialize>(items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = attrinet_market::encode(item).len();
        if i > start && size + n > FRAME_FILL {
            out.push(&items[start..i]);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// How long fetching a batch may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchTimeouts {
    /// Longest wait for each message.
    pub idle: Duration,
    /// Longest the whole fetch may take, however steadily the provider sends.
    pub total: Duration,
}

impl Default for FetchTimeouts {
    fn default() -> Self {
        FetchTimeouts { idle: Duration::from_secs(10), total: FETCH_DEADLINE }
    }
}

/// The default deadline of a whole fetch, and the batch server's for a whole answer: the
/// largest batch, [`MAX_BATCH_BYTES`], at 1 MiB/s.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(128);

/// The most bytes of receipts and weights one fetch takes in, whatever the provider sends:
/// room for [`MAX_BATCH_RECEIPTS`] receipts (each encodes to well under 650 bytes: 400 fit
/// in a frame), and as much again for their weights.
pub const MAX_BATCH_BYTES: usize = 128 << 20;

/// Asks `peer` for the receipts of `req`. Nothing here is trusted: the caller checks them
/// against the settlement on chain.
pub async fn fetch_batch(
    network: &Client,
    peer: PeerId,
    req: BatchRequest,
    timeouts: FetchTimeouts,
) -> Result<FetchedBatch, FetchError> {
    let max = req.upto.0.saturating_sub(req.after.0);
    // A voucher far ahead of the last settlement claims a batch no provider hands out: ask
    // for none of it rather than take whatever comes.
    if max > MAX_BATCH_RECEIPTS {
        return Err(FetchError::Oversized(max));
    }
    tokio::time::timeout(timeouts.total, fetch(network, peer, req, max, timeouts.idle))
        .await
        .map_err(|_| FetchError::Deadline(timeouts.total))?
}

async fn fetch(
    network: &Client,
    peer: PeerId,
    req: BatchRequest,
    max: u64,
    idle: Duration,
) -> Result<FetchedBatch, FetchError> {
    network.connect(peer).await?;
    let mut stream = network.open_stream(peer, BATCH_PROTOCOL).await?;
    write_msg(&mut stream, &req).await?;
    let mut out = FetchedBatch::default();
    // The non-zero roots of the receipts so far whose weights have not come yet: weights
    // are taken for these only, once each, so they are never more than the receipts.
    let mut roots = HashSet::new();
    let mut bytes = 0usize;
    loop {
        let msg = read_msg::<BatchMsg>(&mut stream, idle).await?;
        // Each frame is at most MAX_FRAME_BYTES; its encoding is its size.
        bytes = bytes.saturating_add(attrinet_market::encode(&msg).len());
        if bytes > MAX_BATCH_BYTES {
            return Err(FetchError::OverBudget);
        }
        match msg {
            BatchMsg::Receipts(r) => {
                roots.extend(r.iter().map(|r| r.receipt.attribution_root).filter(|root| !root.is_zero()));
                out.receipts.extend(r);
                if out.receipts.len() as u64 > max {
                    return Err(FetchError::TooMany(out.receipts.len(), max));
                }
            }
            BatchMsg::Weights(w) => {
                for w in w {
                    let root = w.root();
                    if !roots.remove(&root) {
                        return Err(FetchError::UnaskedWeights(root));
                    }
                    out.weights.push(w);
                }
            }
            BatchMsg::End => return Ok(out),
            BatchMsg::Error(e) => return Err(FetchError::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_filled_by_size_and_keep_every_item_in_order() {
        // Items of 10 KiB each: 12 fit under the fill, so 40 make four frames.
        let items: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 * 1024]).collect();
        let chunks = by_size(&items);
        assert!(chunks.len() > 1);
        for c in &chunks {
            let size: usize = c.iter().map(|x| attrinet_market::encode(x).len()).sum();
            assert!(size <= FRAME_FILL || c.len() == 1, "a frame of {size} bytes");
            assert!(
                attrinet_market::encode(&BatchMsg::Weights(Vec::new())).len() + size < crate::wire::MAX_FRAME_BYTES
            );
        }
        assert_eq!(chunks.concat(), items);
        assert!(by_size::<u8>(&[]).is_empty());
        // One item over the fill still goes, alone.
        let big = vec![vec![7u8; FRAME_FILL + 1], vec![1]];
        assert_eq!(by_size(&big).len(), 2);
    }
}
