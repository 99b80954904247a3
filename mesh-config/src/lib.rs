//! The `mesh.toml` schema and validation, and the control protocol shared by `meshd` and `ikectl`.
//!
//! [`MeshConfig::load`] reads and validates a mesh file and its psk_file; every problem found
//! comes back at once as [`ConfigErrors`], each naming the file, line and key, what is wrong and
//! what to do.
//!
//! The modules depend one way: `config` (the typed file) <- `entries` (sections as read) <-
//! `validate` (checks across entries) <- `parse` (TOML text to `MeshConfig`, the entry point);
//! `reader` (the checked TOML walk) sits below `entries` and `parse`.

pub mod control;
pub mod reload;
pub mod types;

mod config;
mod duration;
mod entries;
mod error;
mod flows;
mod identity;
mod metrics;
mod parse;
mod reader;
mod secret;
mod validate;

pub use types::{Cipher, Encap, Mode};

pub use config::{
    parse_unicast_mac, DhGroup, IfaceAddress, IkeSection, ManualSa, MeshConfig, MeshSection, Node, Overlay, OverlayMtu,
    Prf, Proposal, StaticMac, DEFAULT_CHILD_LIFETIME, DEFAULT_DPD, DEFAULT_IKE_LIFETIME, DEFAULT_PROPOSALS,
    DEFAULT_VXLAN_PORT, MAX_OVERLAY_MTU, MAX_STATIC_MACS, MAX_VNI, MIN_MANUAL_SPI, MIN_OVERLAY_MTU, MIN_PSK_LEN,
    PROPOSAL_FORM,
};
pub use duration::{format_duration, parse_duration, DURATION_FORM};
pub use error::{ConfigError, ConfigErrors};
pub use flows::FlowsSection;
pub use identity::{base64_encode, PrivateKeySeed, PublicKey, DEFAULT_KEY_FILE, ED25519_KEY_LEN};
pub use metrics::{MetricsSection, DEFAULT_METRICS_PORT};
pub use secret::{KeyBytes, Psk, MANUAL_KEY_LEN};

#[cfg(test)]
mod tests;
