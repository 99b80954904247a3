//! The daemon's small integer ids. A leaf: it depends on nothing, so that `topology`, `fdb`,
//! `pmtu`, the SADB and the datapath can all name peers and overlays without importing each
//! other (docs/architecture.md, "Modules").

/// A peer's id for the daemon's lifetime: kept across reloads, never reused for another peer
/// (SAs, FDB entries and drop counters refer to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub usize);

/// Index of an overlay in `Topology::overlays`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OverlayId(pub usize);
