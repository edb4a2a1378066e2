//! `/attrinet/view/1`: a node that connects to a peer asks it once for its market view, so
//! that it learns the market at once instead of waiting for every provider to republish.
//!
//! This replaces republishing on every new gossipsub subscriber, which made each join cost
//! the whole network a round of adverts (every node republished to everyone for one
//! newcomer). The pull costs the one peer asked one answer, and is bounded both ways: a node
//! pulls at most [`PULLS_PER_WINDOW`] times per [`PULL_WINDOW`] and takes at most
//! [`MAX_VIEW_ADVERTS`](attrinet_market::MAX_VIEW_ADVERTS) adverts in [`SYNC_DEADLINE`]; a
//! node answers each peer at most [`ANSWERS_PER_PEER`] times per window and at most
//! [`MAX_SERVING`] peers at once.
//! Adverts passed on are others' signed words: each is checked against its own node's key
//! ([`SignedAdvert::from_bytes`]) and then goes through the same view (and, where the node
//! checks publishers, the same registration gate) as a gossiped one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use attrinet_market::{MAX_ADVERT_BYTES, MAX_VIEW_ADVERTS, MarketView, SignedAdvert, encode};
use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::network::unix_now;
use crate::wire::{MAX_FRAME_BYTES, WireError, read_msg, write_msg};

/// The view-sync protocol.
pub const VIEW_PROTOCOL: StreamProtocol = StreamProtocol::new("/attrinet/view/1");
/// Pulls a node starts per [`PULL_WINDOW`]: a few peers' views are the whole market.
pub(crate) const PULLS_PER_WINDOW: usize = 3;
/// The window of [`PULLS_PER_WINDOW`] and [`ANSWERS_PER_PEER`].
pub(crate) const PULL_WINDOW: Duration = Duration::from_secs(60);
/// Answers one peer gets per [`PULL_WINDOW`]. More than one: a user's commands (`models`,
/// then `query`, ...) are processes of one key, each of which pulls once when it starts.
pub(crate) const ANSWERS_PER_PEER: u32 = 8;
/// Peers answered at once; more are refused (the stream is dropped).
pub(crate) const MAX_SERVING: usize = 4;
/// Longest a whole pull may take, either side.
pub(crate) const SYNC_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Adverts per frame: each is at most [`MAX_ADVERT_BYTES`], so a frame stays within
/// [`MAX_FRAME_BYTES`] with room for the framing.
const PER_FRAME: usize = MAX_FRAME_BYTES / (MAX_ADVERT_BYTES + 8) - 1;

/// One frame of an answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ViewMsg {
    /// Encoded signed adverts.
    Adverts(Vec<Vec<u8>>),
    /// The answer is complete.
    End,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the peer sent more than {MAX_VIEW_ADVERTS} adverts")]
    TooMany,
    #[error("the peer passed on an advert that does not check: {0}")]
    Bad(attrinet_market::AdvertError),
    #[error("no answer within {SYNC_DEADLINE:?}")]
    Deadline,
}

/// Reads a peer's answer: every advert checked (signature, bounds, expiry), at most the
/// view's size. The first bad advert ends the pull: an honest peer passes on only adverts
/// it checked itself.
pub(crate) async fn read_view(stream: &mut libp2p::Stream) -> Result<Vec<SignedAdvert>, SyncError> {
    let read = async {
        let mut got = Vec::new();
        loop {
            match read_msg::<ViewMsg>(stream, FRAME_TIMEOUT).await? {
                ViewMsg::End => return Ok(got),
                ViewMsg::Adverts(batch) => {
                    if got.len() + batch.len() > MAX_VIEW_ADVERTS {
                        return Err(SyncError::TooMany);
                    }
                    let now = unix_now();
                    for bytes in batch {
                        got.push(SignedAdvert::from_bytes(&bytes, now).map_err(SyncError::Bad)?);
                    }
                }
            }
        }
    };
    tokio::time::timeout(SYNC_DEADLINE, read).await.map_err(|_| SyncError::Deadline)?
}

/// Writes `view` to a peer that asked.
async fn write_view(stream: &mut libp2p::Stream, view: &MarketView) -> Result<(), WireError> {
    let adverts = view.signed(unix_now());
    for chunk in adverts.chunks(PER_FRAME) {
        write_msg(stream, &ViewMsg::Adverts(chunk.iter().map(encode).collect())).await?;
    }
    write_msg(stream, &ViewMsg::End).await
}

/// Each peer's answers in its current window, bounded: ended windows go first.
#[derive(Default)]
struct Answered(HashMap<PeerId, (Instant, u32)>);

impl Answered {
    /// Whether `peer` may be answered now (and counts it if so).
    fn admit(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        if self.0.len() >= 4096 {
            self.0.retain(|_, (start, _)| now.duration_since(*start) < PULL_WINDOW);
        }
        let (start, answered) = self.0.entry(peer).or_insert((now, 0));
        if now.duration_since(*start) >= PULL_WINDOW {
            (*start, *answered) = (now, 0);
        }
        if *answered >= ANSWERS_PER_PEER {
            return false;
        }
        *answered += 1;
        true
    }
}

/// Answers view pulls until the event loop stops: `view` fetches a snapshot from it
/// (`None` once it has stopped).
pub(crate) async fn serve<F, Fut>(mut incoming: libp2p_stream::IncomingStreams, view: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<MarketView>> + Send + 'static,
{
    let serving = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    let mut answered = Answered::default();
    let view = std::sync::Arc::new(view);
    while let Some((peer, mut stream)) = incoming.next().await {
        if !answered.admit(peer) {
            debug!(target: "p2p::sync", %peer, "view asked again within the window; refused");
            continue;
        }
        let Ok(permit) = serving.clone().try_acquire_owned() else {
            debug!(target: "p2p::sync", %peer, "serving {MAX_SERVING} views already; refused");
            continue;
        };
        let view = view.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(snapshot) = view().await else { return };
            match tokio::time::timeout(SYNC_DEADLINE, write_view(&mut stream, &snapshot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(target: "p2p::sync", %peer, %e, "view answer failed"),
                Err(_) => debug!(target: "p2p::sync", %peer, "view answer cut at the deadline"),
            }
        });
    }
}

/// Pulls started in the current window.
#[derive(Debug)]
pub(crate) struct PullBudget {
    window_start: Instant,
    started: usize,
    asked: HashMap<PeerId, Instant>,
}

impl Default for PullBudget {
    fn default() -> Self {
        PullBudget { window_start: Instant::now(), started: 0, asked: HashMap::new() }
    }
}

impl PullBudget {
    /// Whether to pull from `peer` now (and counts it if so).
    pub(crate) fn take(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= PULL_WINDOW {
            self.window_start = now;
            self.started = 0;
            self.asked.retain(|_, t| now.duration_since(*t) < PULL_WINDOW);
        }
        if self.started >= PULLS_PER_WINDOW || self.asked.contains_key(&peer) {
            return false;
        }
        self.started += 1;
        self.asked.insert(peer, now);
        true
    }
}
