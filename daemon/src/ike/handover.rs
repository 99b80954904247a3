//! IKE SAs as a running meshd hands them to the one that takes over (`crate::upgrade`): keys,
//! SPIs, message IDs, Child SAs and timers, so that the new endpoint carries on where the old
//! one stopped and peers notice nothing. Only established IKE SAs with nothing under way (no
//! request outstanding, no Child SA being rekeyed) cross; the others are renegotiated.
//!
//! Instants cross as durations from the moment of the handover.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mesh_config::{Mode, PublicKey};
use serde::{Deserialize, Serialize};

use super::child::Children;
use super::context::Context;
use super::crypto::keys::IkeSaKeysRecord;
use super::crypto::{CryptoError, IkeSaKeys};
use super::identity::{AuthMethod, PeerAuth};
use super::policy::Origin;
use super::sa::{IkeSa, Phase};
use super::window::RequestWindow;

/// IVs of the IKE SA keys the new meshd skips past the last one the old one used (it stopped
/// sending before the handover; the margin only guards against a (key, IV) pair twice).
const IV_HANDOVER_MARGIN: u64 = 1024;

/// What the running meshd's endpoint hands over.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IkeHandover {
    pub(super) sas: Vec<IkeSaRecord>,
    /// Inbound Child SAs kept briefly after their replacement.
    pub(super) retiring: Vec<RetiringRecord>,
}

impl IkeHandover {
    /// Whether no IKE SA crosses.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.sas.is_empty()
    }


    /// Whether an IKE SA handed over owns the inbound Child SA `spi` (or retires it).
    pub fn owns_inbound(&self, spi: u32) -> bool {
        let children = self.sas.iter().flat_map(|sa| &sa.children);
        children.map(|child| child.inbound_spi).chain(self.retiring.iter().map(|r| r.spi)).any(|owned| owned == spi)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct IkeSaRecord {
    /// The peer, by address (the new endpoint numbers its peers itself).
    pub(super) peer: IpAddr,
    pub(super) answers_probes: bool,
    pub(super) initiator: bool,
    pub(super) our_spi: u64,
    pub(super) their_spi: u64,
    pub(super) keys: IkeSaKeysRecord,
    pub(super) remote: SocketAddr,
    pub(super) local_port: u16,
    pub(super) window: WindowRecord,
    pub(super) children: Vec<ChildRecord>,
    pub(super) established_ago: Duration,
    pub(super) created_ago: Duration,
    pub(super) last_heard_ago: Duration,
    pub(super) rekey_in: Option<Duration>,
    pub(super) nat_detected: bool,
    /// Whether the NAT is in front of the peer (its address may move, RFC 7296 §2.23).
    #[serde(default)]
    pub(super) peer_behind_nat: bool,
    pub(super) origin: Origin,
    /// How the peer authenticated (`ikectl sa list` shows it for the SA's whole life).
    pub(super) peer_auth: Option<PeerAuthRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeerAuthRecord {
    method: AuthMethod,
    key: Option<[u8; mesh_config::ED25519_KEY_LEN]>,
}

impl From<PeerAuth> for PeerAuthRecord {
    fn from(auth: PeerAuth) -> Self {
        PeerAuthRecord { method: auth.method, key: auth.key.map(|key| *key.as_bytes()) }
    }
}

impl From<&PeerAuthRecord> for PeerAuth {
    fn from(record: &PeerAuthRecord) -> Self {
        PeerAuth { method: record.method, key: record.key.map(PublicKey::from_bytes) }
    }
}

impl std::fmt::Debug for IkeSaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeSaRecord").field("peer", &self.peer).field("our_spi", &self.our_spi).finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WindowRecord {
    pub(super) next_request_id: u32,
    pub(super) expected_request_id: u32,
    pub(super) last_response: Option<(u32, Vec<u8>)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ChildRecord {
    pub(super) inbound_spi: u32,
    pub(super) outbound_spi: u32,
    pub(super) mode: Mode,
    pub(super) rekey_in: Duration,
    pub(super) expire_in: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RetiringRecord {
    pub(super) peer: IpAddr,
    pub(super) spi: u32,
    pub(super) in_: Duration,
}

pub(super) fn until(at: Instant, now: Instant) -> Duration {
    at.saturating_duration_since(now)
}

fn ago(at: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(at)
}

fn back(ago: Duration, now: Instant) -> Instant {
    now.checked_sub(ago).unwrap_or(now)
}

impl IkeSa {
    /// This SA for the meshd that takes over; `None` unless it is established with a known
    /// peer and nothing is under way.
    pub(super) fn export(&self, cx: &Context, now: Instant) -> Option<IkeSaRecord> {
        let Phase::Established { since } = self.phase else { return None };
        let peer = self.peer?;
        if self.delete_at.is_some() {
            return None;
        }
        Some(IkeSaRecord {
            peer: cx.settings.peers.get(peer)?.address,
            answers_probes: cx.peers.get(peer).is_some_and(|state| state.answers_probes),
            initiator: self.initiator,
            our_spi: self.our_spi,
            their_spi: self.their_spi,
            keys: self.keys.export(IV_HANDOVER_MARGIN),
            remote: self.remote,
            local_port: self.local_port,
            window: self.window.export()?,
            children: self.children.export(now)?,
            established_ago: ago(since, now),
            created_ago: ago(self.created, now),
            last_heard_ago: ago(self.last_heard, now),
            rekey_in: self.rekey_at.map(|at| until(at, now)),
            nat_detected: self.nat_detected,
            peer_behind_nat: self.peer_behind_nat,
            origin: self.origin,
            peer_auth: self.peer_auth.map(PeerAuthRecord::from),
        })
    }

    /// The SA a running meshd handed over, with `peer` (its index here).
    pub(super) fn restore(record: &IkeSaRecord, peer: usize, now: Instant) -> Result<Self, CryptoError> {
        Ok(IkeSa {
            peer: Some(peer),
            initiator: record.initiator,
            our_spi: record.our_spi,
            their_spi: record.their_spi,
            keys: IkeSaKeys::restore(&record.keys)?,
            phase: Phase::Established { since: back(record.established_ago, now) },
            remote: record.remote,
            local_port: record.local_port,
            window: RequestWindow::restore(&record.window),
            children: Children::restore(&record.children, now),
            created: back(record.created_ago, now),
            last_heard: back(record.last_heard_ago, now),
            rekey_at: record.rekey_in.map(|rekey_in| now + rekey_in),
            nat_detected: record.nat_detected,
            peer_behind_nat: record.peer_behind_nat,
            origin: record.origin,
            delete_at: None,
            ike_collision: None,
            children_moved_to: None,
            peer_auth: record.peer_auth.as_ref().map(PeerAuth::from),
        })
    }
}
