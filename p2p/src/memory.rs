//! An in-process transport for simulating many nodes in one process: libp2p's memory
//! transport under the same noise and yamux upgrades as TCP, with a meter of the bytes each
//! node writes. A node built with [`Transport::Network`] carries it too, switched off.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport as _, noise, yamux};

/// Which transports a node dials and listens on.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    /// TCP and QUIC (and circuits through relays over them): what a real node runs.
    #[default]
    Network,
    /// Also libp2p's in-process memory transport (`/memory/PORT` addresses), which reaches
    /// only nodes in the same process: for simulations of hundreds of nodes, which would
    /// need thousands of sockets on loopback. Counts what this node writes in the meter.
    Memory(ByteMeter),
}

/// Bytes a node has written to its memory-transport connections, counted as they leave it:
/// after noise and yamux framing, so everything a peer receives (gossip, identify, the DHT,
/// pings, inference streams) with its overheads, as on a wire without TCP/IP headers.
#[derive(Clone, Debug, Default)]
pub struct ByteMeter(Arc<AtomicU64>);

impl ByteMeter {
    /// A meter at zero.
    pub fn new() -> ByteMeter {
        ByteMeter::default()
    }

    /// Bytes written so far.
    pub fn sent(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What [`transport`] gives the swarm builder: a transport, or why it could not be made.
type Built = Result<OptionalTransport<Boxed<(PeerId, StreamMuxerBox)>>, Box<dyn std::error::Error + Send + Sync>>;

/// The memory transport, upgraded as TCP is, for [`Transport::Memory`]; nothing otherwise.
pub(crate) fn transport(key: &Keypair, which: &Transport) -> Built {
    let Transport::Memory(meter) = which else {
        return Ok(OptionalTransport::none());
    };
    let meter = meter.clone();
    let upgraded = MemoryTransport::default()
        .map(move |channel, _| Metered { inner: channel, meter: meter.clone() })
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed();
    Ok(OptionalTransport::some(upgraded))
}

/// A connection whose writes are counted.
struct Metered<S> {
    inner: S,
    meter: ByteMeter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.meter.0.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
