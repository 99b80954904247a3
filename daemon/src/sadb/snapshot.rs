//! The SADB as the running meshd hands it to the one that takes over (`crate::upgrade`): every
//! SA with its keys, its next sequence number and its replay window. It crosses only the
//! root-only handover socket, never a file; the keys are wiped when a record is dropped.

use std::net::SocketAddr;

use mesh_config::control::SaOrigin;
use mesh_config::{Cipher, Encap, Mode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{InboundSa, OutboundSa, SaParams, SaTables};
use crate::esp::{CryptoError, KeyMaterial, Opener, ReplayWindow, Sealer};
use crate::topology::Topology;

/// Sequence numbers the new meshd skips past the last one the old one handed out: the workers
/// are stopped when the snapshot is taken, so this only guards against a (key, IV) pair ever
/// being used twice should a sealed packet have escaped the count.
pub const SEQUENCE_HANDOVER_MARGIN: u64 = 4096;

/// How far a meshd whose handover failed after it sent its SAs skips its outbound sequence
/// numbers before it forwards again: the new meshd may have sealed packets with them meanwhile
/// (at most for the handover's timeout; 2^28 packets are 18 s at 15 million a second).
pub const SEQUENCE_FAILED_HANDOVER_SKIP: u64 = 1 << 28;

/// Every SA of the node.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SadbSnapshot {
    pub inbound: Vec<InboundRecord>,
    pub outbound: Vec<OutboundRecord>,
}

/// What both directions carry; the peer by name, since the new meshd numbers its peers itself.
#[derive(Serialize, Deserialize)]
pub struct SaRecord {
    pub spi: u32,
    pub peer: String,
    pub cipher: Cipher,
    pub mode: Mode,
    pub encap: Encap,
    pub esn: bool,
    pub origin: SaOrigin,
    pub created_ms: u64,
    pub remote: SocketAddr,
    /// Whether the peer's ESP came through a NAT when the SA was made (it may follow a rebinding).
    #[serde(default)]
    pub behind_nat: bool,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for SaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaRecord").field("spi", &self.spi).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Drop for SaRecord {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InboundRecord {
    pub sa: SaRecord,
    pub replay_size: u32,
    pub replay_top: u64,
    pub replay_bits: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OutboundRecord {
    pub sa: SaRecord,
    /// The first sequence number the new meshd may hand out, minus one.
    pub sequence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the running meshd has SAs with peer {0}, which this mesh file does not name; start the new meshd with the same mesh file")]
    UnknownPeer(String),
    #[error("the running meshd handed over an SA key that is not usable: {0}")]
    Key(#[from] CryptoError),
    #[error(transparent)]
    Sadb(#[from] super::SadbError),
    #[error("the running meshd handed over a replay window of SPI 0x{0:08x} that does not fit its size")]
    ReplayWindow(u32),
    /// A manual SA's sequence-number mark cannot be read or reserved (the message says why).
    #[error(transparent)]
    SequenceMark(Box<dyn std::error::Error + Send + Sync>),
}

fn record(params: &SaParams, key: &KeyMaterial, topology: &Topology) -> SaRecord {
    SaRecord {
        spi: params.spi,
        peer: topology.peer(params.peer).name.clone(),
        cipher: params.cipher,
        mode: params.mode,
        encap: params.encap,
        esn: params.esn,
        origin: params.origin,
        created_ms: params.created_ms,
        remote: params.remote,
        behind_nat: params.behind_nat,
        key: key.reveal().to_vec(),
    }
}

impl SaRecord {
    fn params(&self, topology: &Topology) -> Result<(SaParams, KeyMaterial), SnapshotError> {
        let peer = topology.peer_by_name(&self.peer).ok_or_else(|| SnapshotError::UnknownPeer(self.peer.clone()))?;
        let params = SaParams {
            spi: self.spi,
            peer,
            cipher: self.cipher,
            mode: self.mode,
            encap: self.encap,
            esn: self.esn,
            origin: self.origin,
            created_ms: self.created_ms,
            remote: self.remote,
            behind_nat: self.behind_nat,
        };
        Ok((params, KeyMaterial::from_bytes(&self.key)?))
    }
}

impl SadbSnapshot {
    /// Takes every SA of `tables`; outbound sequence numbers skip ahead by the margin.
    pub fn take(tables: &SaTables, topology: &Topology) -> Self {
        let inbound = tables
            .inbound_sas()
            .map(|sa| {
                let (replay_size, replay_top, replay_bits) = sa.replay().to_parts();
                InboundRecord {
                    sa: record(&sa.params, sa.opener.key_material(), topology),
                    replay_size,
                    replay_top,
                    replay_bits,
                }
            })
            .collect();
        let outbound = tables
            .outbound_sas()
            .map(|sa| OutboundRecord {
                sa: record(&sa.params, sa.sealer.key_material(), topology),
                sequence: sa.last_sequence().saturating_add(SEQUENCE_HANDOVER_MARGIN),
            })
            .collect();
        SadbSnapshot { inbound, outbound }
    }

    /// The SAs to install, for peers of `topology`. `reservation` gives each outbound SA the
    /// sequence numbers it may use: (used up to, reserved up to); unlimited for IKE SAs, the
    /// reservation on disk for manual ones (manual_nonces.rs).
    pub fn restore(
        &self,
        topology: &Topology,
        mut reservation: impl FnMut(&SaRecord) -> Result<(u64, u64), SnapshotError>,
    ) -> Result<(Vec<InboundSa>, Vec<OutboundSa>), SnapshotError> {
        let mut inbound = Vec::with_capacity(self.inbound.len());
        for record in &self.inbound {
            let (params, key) = record.sa.params(topology)?;
            let replay = ReplayWindow::from_parts(record.replay_size, record.replay_top, record.replay_bits.clone())
                .ok_or(SnapshotError::ReplayWindow(params.spi))?;
            let opener = Opener::new(params.cipher, &key)?;
            inbound.push(InboundSa::new(params, opener, replay));
        }
        let mut outbound = Vec::with_capacity(self.outbound.len());
        for record in &self.outbound {
            let (params, key) = record.sa.params(topology)?;
            let (used, reserved) = reservation(&record.sa)?;
            let sealer = Sealer::new(params.cipher, &key)?;
            outbound.push(OutboundSa::resumed(params, sealer, record.sequence.max(used), reserved));
        }
        Ok((inbound, outbound))
    }
}
