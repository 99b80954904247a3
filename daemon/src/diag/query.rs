//! The diagnostic query (`wire::query`): `ikectl ping` on one node asks the peer's meshd for its
//! own view of the pair over UDP on the underlay, outside the SAs, so that it works exactly when
//! they are broken. Both ends authenticate with HMAC-SHA-256 under a key of the pair only, never
//! a mesh-wide secret: for a pair keyed by IKE, derived from the SK_d of each of the pair's IKE
//! SAs (`IkeSaKeys::query_key`; while an IKE SA is rekeyed either side's may verify), for a
//! manually keyed pair from its two manual SA keys, which both nodes read from the same
//! mesh.toml. Without an IKE SA (IKE failing) only manual pairs can be asked. Requests carry a
//! random nonce and the sender's clock; a responder refuses stale clocks and nonces it has seen
//! (anti-replay).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::{hmac, rand};
use mesh_config::control::PeerView;
use mesh_config::MeshConfig;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::error::QueryError;
use crate::keying::Keying;
use crate::state::MeshState;
use crate::topology::{Peer, PeerId};
use crate::wire::query::{Packet, QueryHeader, QueryType, MAC_LEN, MAX_BODY_LEN, MAX_LEN};

/// The UDP port of the diagnostic query on the underlay.
pub const QUERY_PORT: u16 = 4795;
/// Requests whose clock differs from ours by more are refused (replays, or clocks far apart).
const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// Nonces remembered for anti-replay (more than MAX_CLOCK_SKEW_MS of any sane query rate).
const SEEN_NONCES: usize = 4096;
const KEY_LABEL: &[u8] = b"meshd diagnostic query v1";
/// Each try waits this long for the answer.
const TRY_TIMEOUT: Duration = Duration::from_secs(1);
const TRIES: usize = 3;

/// The HMAC keys of the pair `me`-`peer`, the likeliest first. From its established IKE SAs,
/// newest first; for a manually keyed pair from both its SA keys, then from each direction's
/// alone, so that a pair whose nodes disagree on one key (what `ikectl ping` is there to find)
/// can still be asked.
fn pair_keys(config: &MeshConfig, keying: &Keying, me: &str, peer: &str, peer_id: PeerId) -> Vec<hmac::Key> {
    let (low, high) = if me <= peer { (me, peer) } else { (peer, me) };
    let secrets: Vec<zeroize::Zeroizing<Vec<u8>>> = match (config.manual_sa(low, high), config.manual_sa(high, low)) {
        (Some(up), Some(down)) => {
            let (up, down) = (up.key.as_bytes().as_slice(), down.key.as_bytes().as_slice());
            [[up, down].concat(), up.to_vec(), down.to_vec()].into_iter().map(zeroize::Zeroizing::new).collect()
        }
        _ => keying.query_keys(peer_id),
    };
    secrets.iter().map(|secret| pair_key(secret, low, high)).collect()
}

/// The HMAC key of the pair `low`-`high` (names in order) from a secret of the pair.
fn pair_key(secret: &[u8], low: &str, high: &str) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&root);
    for part in [KEY_LABEL, low.as_bytes(), &[0], high.as_bytes()] {
        context.update(part);
    }
    hmac::Key::new(hmac::HMAC_SHA256, context.sign().as_ref())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An answer: the peer's view and the address it came from.
type Answer = (PeerView, SocketAddr);
/// Requests in flight by nonce: the peer asked and where its answer goes.
type Pending = HashMap<u64, (String, oneshot::Sender<Answer>)>;

/// The query socket, the answers being waited for, and the nonces already seen.
pub struct QueryService {
    socket: StdUdpSocket,
    pending: Mutex<Pending>,
    seen: Mutex<VecDeque<(String, u64)>>,
}

impl QueryService {
    /// Binds UDP `QUERY_PORT` on the node's underlay address.
    pub fn bind(local: IpAddr) -> io::Result<QueryService> {
        QueryService::adopt(StdUdpSocket::bind(SocketAddr::new(local, QUERY_PORT))?)
    }

    /// Serves on `socket`, bound to `QUERY_PORT` (a running meshd hands its own over,
    /// `crate::upgrade`).
    pub fn adopt(socket: StdUdpSocket) -> io::Result<QueryService> {
        socket.set_nonblocking(true)?;
        Ok(QueryService { socket, pending: Mutex::new(HashMap::new()), seen: Mutex::new(VecDeque::new()) })
    }

    /// A second descriptor of the socket, to hand to the meshd that takes over.
    pub fn handover_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.socket.try_clone()?.into())
    }

    /// Asks `peer` (at `address`) for its view; the view and the address the answer came from.
    pub async fn ask(&self, config: &MeshConfig, keying: &Keying, me: &str, peer: &Peer) -> Result<Answer, QueryError> {
        let address = peer.address;
        let keys = pair_keys(config, keying, me, &peer.name, peer.id);
        if keys.is_empty() {
            return Err(QueryError::NoPairKey { me: me.to_string(), peer: peer.name.clone() });
        }
        let peer = peer.name.as_str();
        let destination = SocketAddr::new(address, QUERY_PORT);
        // Each try with the next key: the peer answers with the one it shares.
        for key in keys.iter().cycle().take(TRIES.max(keys.len())) {
            let nonce = random_nonce()?;
            let request = seal(
                key,
                QueryHeader { query_type: QueryType::Request, nonce, timestamp_ms: unix_ms(), sender: me },
                b"",
            )
            .ok_or_else(|| QueryError::TooLong { peer: peer.to_string() })?;
            let (sender, answer) = oneshot::channel();
            self.lock_pending().insert(nonce, (peer.to_string(), sender));
            if let Err(source) = self.socket.send_to(&request, destination) {
                self.lock_pending().remove(&nonce);
                return Err(QueryError::Send { destination, peer: peer.to_string(), source });
            }
            let answered = tokio::time::timeout(TRY_TIMEOUT, answer).await;
            self.lock_pending().remove(&nonce);
            if let Ok(Ok(answer)) = answered {
                return Ok(answer);
            }
        }
        Err(QueryError::NoAnswer { peer: peer.to_string(), address, port: QUERY_PORT })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// False when (`sender`, `nonce`) was seen before; remembers it.
    fn first_time(&self, sender: &str, nonce: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.iter().any(|(s, n)| *n == nonce && s == sender) {
            return false;
        }
        if seen.len() == SEEN_NONCES {
            seen.pop_front();
        }
        seen.push_back((sender.to_string(), nonce));
        true
    }
}

pub fn random_nonce() -> Result<u64, QueryError> {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes).map_err(|_| QueryError::Random)?;
    Ok(u64::from_be_bytes(bytes))
}

/// Header + body + HMAC.
fn seal(key: &hmac::Key, header: QueryHeader<'_>, body: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_LEN];
    let len = header.emit(body, &mut buf)?;
    let tag = hmac::sign(key, &buf[..len]);
    buf[len..len + MAC_LEN].copy_from_slice(tag.as_ref());
    buf.truncate(len + MAC_LEN);
    Some(buf)
}

/// What answering a peer's query reads: the mesh file (for the pair's key) and this node's view.
pub struct Responder {
    pub query: Arc<QueryService>,
    pub config: Arc<ArcSwap<MeshConfig>>,
    pub state: Arc<MeshState>,
    pub keying: Arc<Keying>,
}

/// Answers requests and hands answers to `ask` until the runtime stops.
pub async fn serve(responder: Responder) -> io::Result<()> {
    let socket = UdpSocket::from_std(responder.query.socket.try_clone()?)?;
    let mut buf = vec![0u8; MAX_LEN + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // E.g. ICMP port unreachable for an earlier answer: the socket itself stays usable.
            Err(error) => {
                tracing::debug!(%error, "receiving a diagnostic query failed");
                continue;
            }
        };
        if let Err(why) = receive(&responder, &buf[..len], from) {
            tracing::debug!(%from, "diagnostic query refused: {why}");
        }
    }
}

fn receive(responder: &Responder, datagram: &[u8], from: SocketAddr) -> Result<(), &'static str> {
    let packet = Packet::new_checked(datagram).map_err(|_| "not a query")?;
    let config = responder.config.load();
    let topology = responder.state.topology();
    let me = topology.node_name.as_str();
    let sender = packet.sender();
    let peer = topology.peer_by_name(sender).ok_or("from a node that is not a peer")?;
    let key = pair_keys(&config, &responder.keying, me, sender, peer)
        .into_iter()
        .find(|key| hmac::verify(key, packet.authenticated(), packet.mac()).is_ok())
        .ok_or("the MAC does not verify with a key of the pair")?;
    match packet.query_type() {
        QueryType::Response => {
            let view: PeerView = serde_json::from_slice(packet.body()).map_err(|_| "an unreadable view")?;
            let waiting = responder.query.lock_pending().remove(&packet.nonce());
            match waiting {
                Some((asked, answer)) if asked == sender => {
                    let _ = answer.send((view, from));
                    Ok(())
                }
                _ => Err("an answer nobody waits for"),
            }
        }
        QueryType::Request => {
            if unix_ms().abs_diff(packet.timestamp_ms()) > MAX_CLOCK_SKEW_MS {
                return Err("a stale request (or clocks more than a minute apart)");
            }
            if !responder.query.first_time(sender, packet.nonce()) {
                return Err("a replayed request");
            }
            let view = super::ping::view_of_pair(&responder.state, &responder.keying, peer, Some(from));
            let body = super::ping::encode_view(view, MAX_BODY_LEN);
            let header = QueryHeader {
                query_type: QueryType::Response,
                nonce: packet.nonce(),
                timestamp_ms: unix_ms(),
                sender: me,
            };
            let response = seal(&key, header, &body).ok_or("the answer does not fit")?;
            responder.query.socket.send_to(&response, from).map_err(|_| "cannot send the answer")?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &hmac::Key) -> Vec<u8> {
        hmac::sign(key, b"x").as_ref().to_vec()
    }

    #[test]
    fn pair_keys_depend_on_the_secret_and_both_names() {
        let n1_n2 = pair_key(b"secret of the pair", "n1", "n2");
        assert_ne!(tag(&n1_n2), tag(&pair_key(b"secret of another pair", "n1", "n2")));
        assert_ne!(tag(&n1_n2), tag(&pair_key(b"secret of the pair", "n1", "n3")));
        assert_ne!(tag(&pair_key(b"k", "n1", "n23")), tag(&pair_key(b"k", "n12", "n3")), "names are separated");
    }

    #[test]
    fn sealed_queries_verify_only_with_the_pair_key() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k1");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"k2");
        let header = QueryHeader { query_type: QueryType::Request, nonce: 7, timestamp_ms: 1, sender: "n1" };
        let sealed = seal(&key, header, b"{}").unwrap();
        let packet = Packet::new_checked(&sealed[..]).unwrap();
        assert!(hmac::verify(&key, packet.authenticated(), packet.mac()).is_ok());
        assert!(hmac::verify(&other, packet.authenticated(), packet.mac()).is_err());
        let mut altered = sealed.clone();
        altered[10] ^= 1;
        let packet = Packet::new_checked(&altered[..]).unwrap();
        assert!(hmac::verify(&key, packet.authenticated(), packet.mac()).is_err());
    }
}
