//! The swarm and the event loop that alone owns it, with the [`Client`] handle that talks
//! to it (the rust-libp2p file-sharing example's pattern).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attrinet_market::{AdvertError, Identity, MarketView, ModelAdvert, ModelId, PublicKey, SignedAdvert, encode};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, connection_limits, dcutr, identify, memory_connection_limits, noise, ping,
    relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::admission::{Admitted, Gate, Held, PublisherCheck};
use crate::memory::Transport;
use crate::sync::{PullBudget, VIEW_PROTOCOL};

/// The gossipsub topic of model adverts.
pub const ADVERT_TOPIC: &str = "/attrinet/adverts/1";

/// Gossipsub scoring, as named constants. Only invalid adverts (P4) and protocol
/// misbehaviour are penalised; the delivery-rate terms (P3) are off because adverts are
/// rare and bursty, and a quiet honest node must not look like a bad one.
mod scoring {
    /// Weight of the advert topic in the total score.
    pub(super) const TOPIC_WEIGHT: f64 = 1.0;
    /// Penalty per invalid advert, squared (P4): one forged advert takes a peer to -10.
    pub(super) const INVALID_MESSAGE_WEIGHT: f64 = -10.0;
    /// How fast that penalty fades per decay interval (kept long: forgeries are deliberate).
    pub(super) const INVALID_MESSAGE_DECAY: f64 = 0.9;
    /// Below this we stop gossiping to a peer.
    pub(super) const GOSSIP_THRESHOLD: f64 = -10.0;
    /// Below this we do not publish to a peer.
    pub(super) const PUBLISH_THRESHOLD: f64 = -50.0;
    /// Below this we ignore a peer entirely.
    pub(super) const GRAYLIST_THRESHOLD: f64 = -80.0;
    /// Reward for time in the mesh (P1), per second, capped: small, so that no amount of
    /// good standing outweighs a few forgeries (the library default counts milliseconds).
    pub(super) const TIME_IN_MESH_WEIGHT: f64 = 0.01;
    /// Cap of the P1 counter (seconds).
    pub(super) const TIME_IN_MESH_CAP: f64 = 3600.0;
    /// Reward per first delivery of a valid advert (P2), capped at
    /// [`FIRST_DELIVERIES_CAP`].
    pub(super) const FIRST_DELIVERIES_WEIGHT: f64 = 1.0;
    /// Cap of the P2 counter.
    pub(super) const FIRST_DELIVERIES_CAP: f64 = 10.0;
}

/// Network settings.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/0`, `/ip4/0.0.0.0/udp/0/quic-v1`, ...).
    pub listen: Vec<Multiaddr>,
    /// Peers to bootstrap from, each `/ip4/.../tcp/PORT/p2p/PEER_ID`.
    pub bootstrap: Vec<Multiaddr>,
    /// How often this node's adverts are republished (with a new seq and expiry).
    pub republish_every: Duration,
    /// Lifetime of a published advert.
    pub advert_ttl: Duration,
    /// Gossipsub heartbeat; shorter in tests so meshes form quickly.
    pub heartbeat: Duration,
    /// Reachability: probing it, and relaying for others.
    pub nat: NatConfig,
    /// How many connections this node takes.
    pub connections: ConnectionBounds,
    /// Whose adverts this node takes: with a check, only registered nodes' (see
    /// [`PublisherCheck`]); without one, any validly signed advert within the view's bounds.
    pub publishers: Option<Arc<dyn PublisherCheck>>,
}

/// How many connections a node takes, and when it takes none: a peer, or many keys, that
/// dial it again and again get no more than these, and a node short of memory refuses new
/// connections rather than die (libp2p's `connection_limits` and
/// `memory_connection_limits`).
#[derive(Clone, Debug)]
pub struct ConnectionBounds {
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Established incoming connections.
    pub max_established_incoming: u32,
    /// Established connections, both ways.
    pub max_established: u32,
    /// Established connections with one peer (a direct one, a relayed one, a spare).
    pub max_per_peer: u32,
    /// Refuse new connections while the process uses more than this share of the host's
    /// memory, in percent.
    pub max_memory_percent: f64,
}

impl Default for ConnectionBounds {
    fn default() -> Self {
        // A node talks to its gossipsub mesh (a dozen peers), the clients it serves and the
        // providers it queries: hundreds are plenty, and each costs buffers.
        ConnectionBounds {
            max_pending_incoming: 64,
            max_established_incoming: 256,
            max_established: 512,
            max_per_peer: 4,
            max_memory_percent: 90.0,
        }
    }
}

/// How a node finds out whether others can dial it, and what it does about it. A node that
/// AutoNAT finds private (behind a NAT or firewall) reserves a slot on up to
/// [`MAX_RELAYS`] of its bootstrap peers that relay (`attrinet relay`, or any reachable
/// node) and advertises the relayed addresses first; a
/// connection through a relay is then upgraded to a direct one by hole punching (DCUtR)
/// where both NATs allow. Every node relays for others, within [`relay_limits`].
#[derive(Clone, Debug)]
pub struct NatConfig {
    /// Wait this long after start before the first reachability probe (AutoNAT's boot delay).
    pub probe_delay: Duration,
    /// Probe again this often while unsure.
    pub probe_retry: Duration,
    /// Take only peers at global IP addresses as probe servers and probe clients, as on the
    /// internet; off for test networks in private address space.
    pub only_global_ips: bool,
    /// This node is public by its operator's word (`attrinet relay`): the addresses it
    /// listens on, but loopback, are its external addresses from the start, which a relay
    /// needs to give in its reservations (a client refuses a reservation without them).
    pub public: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            probe_delay: Duration::from_secs(15),
            probe_retry: Duration::from_secs(90),
            only_global_ips: true,
            public: false,
        }
    }
}

/// The most relays a private node reserves a slot on.
pub const MAX_RELAYS: usize = 2;

/// How often a private node tries again to reserve on relays it lost or was refused by.
const RELAY_RETRY: Duration = Duration::from_secs(10);

/// What this node relays for others: a few reservations and circuits, each bounded in time
/// and bytes. Large enough for an inference's stream (tokens, receipt, payment) until the
/// connection is upgraded to a direct one, small enough that relaying cannot be used to
/// move bulk data through a node.
pub fn relay_limits() -> relay::Config {
    relay::Config {
        max_reservations: 64,
        max_reservations_per_peer: 2,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: 32,
        max_circuits_per_peer: 4,
        max_circuit_duration: Duration::from_secs(600),
        max_circuit_bytes: 8 << 20,
        ..relay::Config::default()
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid"),
            ],
            bootstrap: Vec::new(),
            // Often enough that a node joined through a relay (which holds no adverts to
            // hand over) sees the market within seconds, not minutes; an advert is ~250 bytes.
            republish_every: Duration::from_secs(20),
            advert_ttl: Duration::from_secs(300),
            heartbeat: Duration::from_secs(1),
            nat: NatConfig::default(),
            connections: ConnectionBounds::default(),
            publishers: None,
        }
    }
}

/// Why a network command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
    /// The swarm could not be built or could not listen.
    #[error("network setup: {0}")]
    Setup(String),
    /// A dial failed.
    #[error("dial {addr}: {reason}")]
    Dial {
        /// Where.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Publishing an advert failed.
    #[error("publish advert: {0}")]
    Publish(String),
    /// The peer could not be reached on the protocol, or does not speak it.
    #[error("open stream: {0}")]
    OpenStream(#[from] libp2p_stream::OpenStreamError),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // The limits come first: they refuse a connection before any other behaviour sets it up.
    limits: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
    autonat: autonat::Behaviour,
    relay: relay::Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The ed25519 key inside a peer id (attrinet peers' ids inline their ed25519 key).
pub fn peer_key(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf-encoded public key.
    if mh.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(PublicKey(key.try_into_ed25519().ok()?.to_bytes()))
}

/// The peer id of an attrinet ed25519 key.
pub fn key_peer(key: &PublicKey) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

fn keypair(identity: &Identity) -> Keypair {
    Keypair::ed25519_from_bytes(identity.ed25519.to_bytes()).expect("a 32-byte ed25519 secret is always valid")
}

fn build_swarm(identity: &Identity, config: &NetConfig, transport: &Transport) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair(identity))
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_other_transport(|key| crate::memory::transport(key, transport))
        .map_err(|e| setup(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(config.heartbeat)
                .validation_mode(ValidationMode::Strict)
                // We validate adverts ourselves before they are forwarded.
                .validate_messages()
                .max_transmit_size(attrinet_market::MAX_ADVERT_BYTES * 4)
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let topic = IdentTopic::new(ADVERT_TOPIC);
            let mut params = gossipsub::PeerScoreParams::default();
            // Many nodes on one host share an IP only in local networks and tests; the
            // colocation penalty stays on for every other address.
            params.ip_colocation_factor_whitelist.insert(std::net::IpAddr::from([127, 0, 0, 1]));
            params.topics.insert(
                topic.hash(),
                gossipsub::TopicScoreParams {
                    topic_weight: scoring::TOPIC_WEIGHT,
                    time_in_mesh_weight: scoring::TIME_IN_MESH_WEIGHT,
                    time_in_mesh_quantum: Duration::from_secs(1),
                    time_in_mesh_cap: scoring::TIME_IN_MESH_CAP,
                    first_message_deliveries_weight: scoring::FIRST_DELIVERIES_WEIGHT,
                    first_message_deliveries_cap: scoring::FIRST_DELIVERIES_CAP,
                    mesh_message_deliveries_weight: 0.0,
                    mesh_failure_penalty_weight: 0.0,
                    invalid_message_deliveries_weight: scoring::INVALID_MESSAGE_WEIGHT,
                    invalid_message_deliveries_decay: scoring::INVALID_MESSAGE_DECAY,
                    ..Default::default()
                },
            );
            gossipsub.with_peer_score(
                params,
                gossipsub::PeerScoreThresholds {
                    gossip_threshold: scoring::GOSSIP_THRESHOLD,
                    publish_threshold: scoring::PUBLISH_THRESHOLD,
                    graylist_threshold: scoring::GRAYLIST_THRESHOLD,
                    ..Default::default()
                },
            )?;
            let mut kad =
                kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad::Config::new(kad::PROTOCOL_NAME));
            // Every attrinet node serves the DHT: nodes run on reachable hosts, and a
            // client-only DHT would leave small networks without servers.
            kad.set_mode(Some(kad::Mode::Server));
            // The relay's status is fixed before any connection exists: libp2p-relay 0.22
            // re-sends a changed status to every connection, relayed ones included, whose
            // handler cannot take it (a panic in libp2p-swarm's `Either` handler).
            let mut relay = relay::Behaviour::new(peer_id, relay_limits());
            relay.set_status(Some(relay::Status::Enable));
            let bounds = &config.connections;
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(bounds.max_pending_incoming))
                        .with_max_established_incoming(Some(bounds.max_established_incoming))
                        .with_max_established(Some(bounds.max_established))
                        .with_max_established_per_peer(Some(bounds.max_per_peer)),
                ),
                memory: memory_connection_limits::Behaviour::with_max_percentage(bounds.max_memory_percent / 100.0),
                identify: identify::Behaviour::new(identify::Config::new("/attrinet/id/1".into(), key.public())),
                ping: ping::Behaviour::default(),
                kad,
                gossipsub,
                stream: libp2p_stream::Behaviour::new(),
                autonat: autonat::Behaviour::new(
                    peer_id,
                    autonat::Config {
                        boot_delay: config.nat.probe_delay,
                        retry_interval: config.nat.probe_retry,
                        only_global_ips: config.nat.only_global_ips,
                        ..autonat::Config::default()
                    },
                ),
                relay,
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

/// What a node offers, before the event loop stamps seq and expiry on it.
#[derive(Clone, Debug)]
pub struct OfferTemplate {
    /// Everything but `seq` and `expires_at`, which the event loop sets on each publish.
    pub advert: ModelAdvert,
}

enum Command {
    Listeners {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Advertise {
        offers: Vec<OfferTemplate>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    UpdateAdverts {
        offers: Vec<OfferTemplate>,
        reply: oneshot::Sender<()>,
    },
    PublishRaw {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Market {
        reply: oneshot::Sender<MarketView>,
    },
    Providers {
        model: ModelId,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Adverts a view sync brought, each checked against its own node's key.
    Pulled {
        adverts: Vec<SignedAdvert>,
    },
    /// A publisher lookup's answer.
    Looked {
        key: PublicKey,
        answer: Result<bool, String>,
    },
}

/// A cloneable handle to the network. Every call is a command to the [`EventLoop`].
#[derive(Clone)]
pub struct Client {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    /// One control for opening streams, used one open at a time: libp2p-stream hands
    /// inbound streams over through a one-slot buffer and drops what does not fit, so a
    /// burst of opens would lose streams at the receiver.
    opener: Arc<tokio::sync::Mutex<libp2p_stream::Control>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer_id", &self.peer_id).finish()
    }
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Handle for accepting protocol streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Opens a stream to `peer`; opens are serialised (see the field's comment).
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream, NetError> {
        Ok(self.opener.lock().await.open_stream(peer, protocol).await?)
    }

    /// The addresses this node listens on (with `/p2p/PEER_ID` appended).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|reply| Command::Listeners { reply }).await
    }

    /// Connects to a peer (`/.../p2p/PEER_ID`) and adds it to the DHT.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Replaces what this node advertises, publishes it now and then periodically, and
    /// announces it as a provider of each model in the DHT.
    pub async fn advertise(&self, offers: Vec<OfferTemplate>) -> Result<(), NetError> {
        self.ask(|reply| Command::Advertise { offers, reply }).await?
    }

    /// Replaces the adverts of models already advertised (a changed free capacity, say) and
    /// publishes them at once, without announcing the models in the DHT again.
    pub async fn update_adverts(&self, offers: Vec<OfferTemplate>) -> Result<(), NetError> {
        self.ask(|reply| Command::UpdateAdverts { offers, reply }).await
    }

    /// Publishes bytes on the advert topic as they are, unchecked. For tools and tests of
    /// advert validation; a node publishes through [`Client::advertise`].
    pub async fn publish_raw_advert(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::PublishRaw { bytes, reply }).await?
    }

    /// A snapshot of this node's view of the market.
    pub async fn market(&self) -> Result<MarketView, NetError> {
        self.ask(|reply| Command::Market { reply }).await
    }

    /// Peers the DHT lists as providers of `model`.
    pub async fn dht_providers(&self, model: ModelId) -> Result<HashSet<PeerId>, NetError> {
        self.ask(|reply| Command::Providers { model, reply }).await
    }

    /// A peer's gossipsub score, if known.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetError> {
        self.ask(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Makes sure we are connected to `peer`, finding its addresses in the DHT if we have
    /// none (a provider known only from its gossiped advert).
    pub async fn connect(&self, peer: PeerId) -> Result<(), NetError> {
        self.ask(|reply| Command::Connect { peer, reply }).await?
    }

    /// Currently connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }
}

/// Owns the swarm; run it with [`EventLoop::run`] on a task.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    identity: Identity,
    config: NetConfig,
    commands: mpsc::Receiver<Command>,
    topic: IdentTopic,
    view: MarketView,
    offers: Vec<OfferTemplate>,
    advert_seq: u64,
    pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
    pending_providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>)>,
    pending_lookup: HashMap<kad::QueryId, PeerId>,
    /// What AutoNAT last concluded about this node's reachability.
    nat: autonat::NatStatus,
    /// Bootstrap peers that relay (their identify lists the hop protocol), at their
    /// configured address: the public nodes a private one reserves a slot on.
    relays: HashMap<PeerId, Multiaddr>,
    /// Relays we reserved (or are reserving) a slot on.
    reserved: HashSet<PeerId>,
    /// Which publishers' adverts are taken, where this node checks.
    gate: Option<Gate>,
    /// View syncs started lately.
    pulls: PullBudget,
    /// For tasks that report back to the loop without keeping it alive.
    weak: mpsc::WeakSender<Command>,
    control: libp2p_stream::Control,
    opener: Arc<tokio::sync::Mutex<libp2p_stream::Control>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").field("peer_id", self.swarm.local_peer_id()).finish()
    }
}

/// Builds the swarm, starts listening and dials the bootstrap peers. Returns the handle and
/// the event loop to spawn.
pub fn new(identity: Identity, config: NetConfig) -> Result<(Client, EventLoop), NetError> {
    new_with_transport(identity, config, Transport::Network)
}

/// [`new`] on the given transports: [`Transport::Memory`] for simulations in one process.
pub fn new_with_transport(
    identity: Identity,
    config: NetConfig,
    transport: Transport,
) -> Result<(Client, EventLoop), NetError> {
    let mut swarm = build_swarm(&identity, &config, &transport)?;
    let topic = IdentTopic::new(ADVERT_TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| NetError::Setup(e.to_string()))?;
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| NetError::Setup(format!("listen on {addr}: {e}")))?;
    }
    for addr in &config.bootstrap {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(NetError::Setup(format!("bootstrap address {addr} lacks /p2p/PEER_ID")));
        };
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        swarm.dial(addr.clone()).map_err(|e| NetError::Dial { addr: addr.clone(), reason: e.to_string() })?;
    }
    let (tx, rx) = mpsc::channel(64);
    let control = swarm.behaviour().stream.new_control();
    let opener = Arc::new(tokio::sync::Mutex::new(control.clone()));
    let weak = tx.downgrade();
    let gate = config.publishers.clone().map(Gate::new);
    let client =
        Client { peer_id: *swarm.local_peer_id(), commands: tx, control: control.clone(), opener: opener.clone() };
    let event_loop = EventLoop {
        swarm,
        identity,
        config,
        commands: rx,
        topic,
        view: MarketView::new(),
        offers: Vec::new(),
        advert_seq: unix_now(),
        pending_dial: HashMap::new(),
        pending_providers: HashMap::new(),
        pending_lookup: HashMap::new(),
        nat: autonat::NatStatus::Unknown,
        relays: HashMap::new(),
        reserved: HashSet::new(),
        gate,
        pulls: PullBudget::default(),
        weak,
        control,
        opener,
    };
    Ok((client, event_loop))
}

impl EventLoop {
    /// Runs until every [`Client`] is dropped.
    pub async fn run(mut self) {
        self.serve_views();
        let mut republish = tokio::time::interval(self.config.republish_every);
        let mut expire = tokio::time::interval(Duration::from_secs(1));
        let mut bootstrap = tokio::time::interval(Duration::from_secs(30));
        let mut relays = tokio::time::interval(RELAY_RETRY);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                _ = republish.tick() => self.publish_offers(),
                _ = expire.tick() => self.view.expire(unix_now()),
                _ = relays.tick() => self.reserve_relays(),
                _ = bootstrap.tick() => {
                    // Fails only while no peer is known; then there is nothing to do.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
    }

    fn publish_offers(&mut self) {
        if self.offers.is_empty() {
            return;
        }
        let now = unix_now();
        self.advert_seq = self.advert_seq.max(now).saturating_add(1);
        let me = *self.swarm.local_peer_id();
        // A private node's relayed addresses first: they are the ones that reach it.
        let relayed = |a: &&Multiaddr| a.iter().any(|p| p == Protocol::P2pCircuit);
        let listeners: Vec<&Multiaddr> = self.swarm.listeners().collect();
        let addrs: Vec<String> = listeners
            .iter()
            .copied()
            .filter(relayed)
            .chain(self.swarm.external_addresses())
            .chain(listeners.iter().copied().filter(|a| !relayed(a)))
            .filter(|a| !a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())))
            // A relayed listen address already ends in our /p2p/ID; appending it again made
            // an address no one could use (the DHT refused it, so clients behind another
            // NAT knew only the provider's unreachable private addresses).
            .filter_map(|a| a.clone().with_p2p(me).ok())
            .map(|a| a.to_string())
            .fold(Vec::new(), |mut v, a| {
                if !v.contains(&a) && v.len() < attrinet_market::MAX_ADVERT_ADDRS {
                    v.push(a);
                }
                v
            });
        for offer in self.offers.clone() {
            let mut advert = offer.advert;
            advert.addrs = addrs.clone();
            advert.seq = self.advert_seq;
            advert.expires_at = now + self.config.advert_ttl.as_secs().max(1);
            let signed = advert.clone().sign(&self.identity.ed25519);
            let bytes = encode(&signed);
            // Gossipsub does not deliver our own messages to us; our view includes us.
            let _ = self.view.insert(signed);
            // Publishing fails with InsufficientPeers before any peer subscribed; the next
            // round retries, so this is only worth a debug line.
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
                debug!(target: "p2p::advert", %e, model = %advert.model, "advert not published");
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listeners { reply } => {
                let me = *self.swarm.local_peer_id();
                let addrs =
                    self.swarm.listeners().map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me))).collect();
                let _ = reply.send(addrs);
            }
            Command::Dial { addr, reply } => {
                let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                    let _ = reply.send(Err(NetError::Dial { addr, reason: "no /p2p/PEER_ID".into() }));
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.pending_dial.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial { addr, reason: e.to_string() }));
                    }
                }
            }
            Command::Advertise { offers, reply } => {
                for o in &offers {
                    let key = kad::RecordKey::new(&o.advert.model.as_bytes());
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                        let _ = reply.send(Err(NetError::Publish(e.to_string())));
                        return;
                    }
                }
                self.offers = offers;
                self.publish_offers();
                let _ = reply.send(Ok(()));
            }
            Command::UpdateAdverts { offers, reply } => {
                self.offers = offers;
                self.publish_offers();
                let _ = reply.send(());
            }
            Command::PublishRaw { bytes, reply } => {
                let r = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes);
                let _ = reply.send(r.map(|_| ()).map_err(|e| NetError::Publish(e.to_string())));
            }
            Command::Market { reply } => {
                let _ = reply.send(self.view.clone());
            }
            Command::Providers { model, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&model.as_bytes()));
                self.pending_providers.insert(id, (HashSet::new(), reply));
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Connect { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let waiting = self.pending_dial.entry(peer).or_default();
                waiting.push(reply);
                if waiting.len() > 1 {
                    return; // a lookup or dial for this peer is already under way
                }
                // Dial with whatever addresses the behaviours know; if none, ask the DHT.
                if self.swarm.dial(peer).is_err() {
                    let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                    self.pending_lookup.insert(id, peer);
                }
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Pulled { adverts } => {
                for advert in adverts {
                    self.admit(Held::Pulled(Box::new(advert)));
                }
            }
            Command::Looked { key, answer } => {
                let Some(gate) = &mut self.gate else { return };
                if let Err(e) = &answer {
                    warn!(target: "p2p::advert", %e, "could not check whether a publisher is registered");
                }
                let (take, held) = gate.answered(key, &answer);
                for h in held {
                    self.judge(take, h);
                }
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(target: "p2p", %address, "listening");
                let loopback = address.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()));
                if self.config.nat.public && !loopback && !address.iter().any(|p| p == Protocol::P2pCircuit) {
                    self.swarm.add_external_address(address.clone());
                }
                if address.iter().any(|p| p == Protocol::P2pCircuit) {
                    // Clients must learn the relayed address now, not at the next period.
                    self.publish_offers();
                }
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                // A lost or refused reservation is tried again on the next round (on this
                // relay or another).
                for a in addresses {
                    if let Some(Protocol::P2p(relay)) = a.iter().take_while(|p| *p != Protocol::P2pCircuit).last() {
                        warn!(target: "p2p::nat", %relay, ?reason, "relay listener closed");
                        self.reserved.remove(&relay);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if endpoint.is_relayed() {
                    debug!(target: "p2p::nat", peer = %peer_id, "connected through a relay");
                } else if num_established.get() == 1 && self.pulls.take(peer_id) {
                    // Not over a relay: a circuit's few bytes are for the query that opened it.
                    self.pull_view(peer_id);
                }
                for reply in self.pending_dial.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new })) => {
                info!(target: "p2p::nat", ?old, ?new, "reachability");
                self.nat = new;
                self.reserve_relays();
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            })) => {
                info!(target: "p2p::nat", relay = %relay_peer_id, "reserved a slot on a relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => match result {
                Ok(_) => {
                    info!(target: "p2p::nat", peer = %remote_peer_id, "upgraded a relayed connection to a direct one")
                }
                Err(e) => {
                    debug!(target: "p2p::nat", peer = %remote_peer_id, %e, "hole punching failed; staying relayed")
                }
            },
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                for reply in self.pending_dial.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(NetError::Dial { addr: Multiaddr::empty(), reason: error.to_string() }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                // Learn the peer's listen addresses for the DHT.
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                let bootstrap = self.config.bootstrap.iter().find(|a| a.iter().last() == Some(Protocol::P2p(peer_id)));
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME)
                    && let Some(addr) = bootstrap
                {
                    self.relays.insert(peer_id, addr.clone());
                    self.reserve_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_advert(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => {
                if let kad::QueryResult::GetClosestPeers(result) = &result
                    && let Some(peer) = self.pending_lookup.remove(&id)
                {
                    let found = match result {
                        Ok(ok) => ok.peers.iter().find(|p| p.peer_id == peer).map(|p| p.addrs.clone()),
                        Err(_) => None,
                    };
                    let dialed = found.filter(|a| !a.is_empty()).is_some_and(|addrs| {
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build();
                        self.swarm.dial(opts).is_ok()
                    });
                    if !dialed {
                        for reply in self.pending_dial.remove(&peer).unwrap_or_default() {
                            let _ = reply.send(Err(NetError::Dial {
                                addr: Multiaddr::empty(),
                                reason: format!("no address found for {peer}"),
                            }));
                        }
                    }
                }
                if let kad::QueryResult::GetProviders(result) = result {
                    if let Some((found, _)) = self.pending_providers.get_mut(&id)
                        && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                    {
                        found.extend(providers);
                    }
                    if step.last
                        && let Some((found, reply)) = self.pending_providers.remove(&id)
                    {
                        let _ = reply.send(found);
                    }
                }
            }
            _ => {}
        }
    }

    /// While AutoNAT finds this node private, listens through up to [`MAX_RELAYS`] relays:
    /// each reservation gives a relayed address that the adverts then carry.
    fn reserve_relays(&mut self) {
        if !matches!(self.nat, autonat::NatStatus::Private) {
            return;
        }
        let candidates: Vec<(PeerId, Multiaddr)> =
            self.relays.iter().filter(|(p, _)| !self.reserved.contains(p)).map(|(p, a)| (*p, a.clone())).collect();
        for (relay, addr) in candidates {
            if self.reserved.len() >= MAX_RELAYS {
                return;
            }
            // A bootstrap address ends in the relay's /p2p/ID.
            let circuit = addr.with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(_) => {
                    info!(target: "p2p::nat", %circuit, "private: listening through a relay");
                    self.reserved.insert(relay);
                }
                Err(e) => warn!(target: "p2p::nat", %circuit, %e, "cannot listen through this relay"),
            }
        }
    }

    fn on_advert(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let now = unix_now();
        let checked = match message.source.as_ref().and_then(peer_key) {
            None => Err(AdvertError::WrongPublisher),
            Some(publisher) => SignedAdvert::from_gossip(&message.data, &publisher, now),
        };
        match checked {
            Ok(advert) => self.admit(Held::Gossip { source, id, advert: Box::new(advert) }),
            Err(e) => self.report(&source, &id, &Err(e)),
        }
    }

    /// Takes a checked advert if its publisher passes the gate (now, or once its lookup
    /// answers).
    fn admit(&mut self, held: Held) {
        let Some(gate) = &mut self.gate else { return self.judge(true, held) };
        let key = held.advert().advert.node_key;
        match gate.admit(held) {
            Admitted::Now(take, held) => self.judge(take, held),
            Admitted::Waiting { start } => {
                if start {
                    self.look_up(key);
                }
            }
        }
    }

    /// Takes an advert into the view (or not), and tells gossipsub what became of it.
    fn judge(&mut self, take: bool, held: Held) {
        let (gossip, advert) = match held {
            Held::Gossip { source, id, advert } => (Some((source, id)), advert),
            Held::Pulled(advert) => (None, advert),
        };
        let verdict = if take {
            let addrs = advert.advert.addrs.clone();
            let peer = key_peer(&advert.advert.node_key);
            self.view.insert(*advert).map(|()| {
                // The advert is signed by the node itself: its addresses are its own word.
                if let Some(peer) = peer {
                    for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    }
                }
            })
        } else {
            Err(AdvertError::Unregistered)
        };
        if let Some((source, id)) = gossip {
            self.report(&source, &id, &verdict);
        }
    }

    fn report(&mut self, source: &PeerId, id: &gossipsub::MessageId, verdict: &Result<(), AdvertError>) {
        let acceptance = match verdict {
            Ok(()) => MessageAcceptance::Accept,
            Err(e) if e.penalise() => {
                warn!(target: "p2p::advert", %source, %e, "rejected advert");
                MessageAcceptance::Reject
            }
            Err(e) => {
                debug!(target: "p2p::advert", %source, %e, "ignored advert");
                MessageAcceptance::Ignore
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(id, source, acceptance);
    }

    /// Runs a publisher lookup off the loop; its answer comes back as a command.
    fn look_up(&self, key: PublicKey) {
        let Some(gate) = &self.gate else { return };
        let lookup = gate.lookup(key);
        let weak = self.weak.clone();
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
            };
            if let Some(commands) = weak.upgrade() {
                let _ = commands.send(Command::Looked { key, answer }).await;
            }
        });
    }

    /// Asks `peer` for its market view, off the loop.
    fn pull_view(&self, peer: PeerId) {
        let opener = self.opener.clone();
        let weak = self.weak.clone();
        tokio::spawn(async move {
            let stream = opener.lock().await.open_stream(peer, VIEW_PROTOCOL).await;
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => return debug!(target: "p2p::sync", %peer, %e, "peer does not answer view syncs"),
            };
            match crate::sync::read_view(&mut stream).await {
                Ok(adverts) => {
                    debug!(target: "p2p::sync", %peer, adverts = adverts.len(), "pulled a view");
                    if let Some(commands) = weak.upgrade() {
                        let _ = commands.send(Command::Pulled { adverts }).await;
                    }
                }
                // An advert that does not check is the peer's doing; a refused or cut pull
                // (the peer is busy, or answered this key lately) is not.
                Err(e @ crate::sync::SyncError::Bad(_)) => warn!(target: "p2p::sync", %peer, %e, "view sync failed"),
                Err(e) => debug!(target: "p2p::sync", %peer, %e, "view sync failed"),
            }
        });
    }

    /// Answers other nodes' view syncs with snapshots of this view, until the loop stops.
    fn serve_views(&mut self) {
        let incoming = match self.control.accept(VIEW_PROTOCOL) {
            Ok(i) => i,
            Err(e) => return warn!(target: "p2p::sync", %e, "cannot answer view syncs"),
        };
        let weak = self.weak.clone();
        tokio::spawn(crate::sync::serve(incoming, move || {
            let weak = weak.clone();
            async move {
                let commands = weak.upgrade()?;
                let (reply, rx) = oneshot::channel();
                commands.send(Command::Market { reply }).await.ok()?;
                rx.await.ok()
            }
        }));
    }
}

/// Longest a publisher lookup may take; then it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
