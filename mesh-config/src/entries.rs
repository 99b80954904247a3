//! Each section as read, before the checks across entries: a field is `None` when it was
//! missing or did not parse (that problem is reported already). `parse` fills these and
//! `validate` checks them against each other.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{IfaceAddress, OverlayMtu};
use crate::identity::PublicKey;
use crate::reader::At;
use crate::secret::KeyBytes;
use crate::types::{Cipher, Encap, Mode};

pub(crate) struct MeshP {
    pub name: Option<String>,
    pub psk_file: Option<At<PathBuf>>,
    pub key_file: Option<PathBuf>,
    pub vxlan_port: u16,
    pub encap: Encap,
    pub mode: Mode,
}

pub(crate) struct NodeP {
    pub idx: usize,
    pub line: usize,
    pub name: Option<At<String>>,
    pub address: Option<At<IpAddr>>,
    pub ssh: Option<String>,
    pub mode: Option<Mode>,
    pub public_keys: Vec<At<PublicKey>>,
}

impl NodeP {
    /// `node "n1"` or `node[3]` when it has no name.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("node \"{}\"", n.v),
            None => format!("node[{}]", self.idx),
        }
    }
}

pub(crate) struct OverlayP {
    pub line: usize,
    pub prefix: String,
    pub name: Option<At<String>>,
    pub vni: Option<At<u32>>,
    /// The interface name and where it came from (the `interface` key, or `name` by default).
    pub interface: Option<At<String>>,
    pub interface_key: String,
    pub mtu: OverlayMtu,
    /// (node name, address) in file order; the address is `None` when it did not parse.
    pub addresses: Vec<(At<String>, Option<At<IfaceAddress>>)>,
    /// (MAC, node name) of each well-formed `static_macs` entry, in file order.
    pub static_macs: Vec<(At<[u8; 6]>, At<String>)>,
}

impl OverlayP {
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("overlay \"{}\"", n.v),
            None => self.prefix.clone(),
        }
    }
}

pub(crate) struct ManualSaP {
    pub line: usize,
    pub prefix: String,
    pub from: Option<At<String>>,
    pub to: Option<At<String>>,
    pub spi: Option<At<u32>>,
    pub cipher: Option<Cipher>,
    pub key: Option<KeyBytes>,
}
