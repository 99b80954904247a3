//! The bytes meshd adds around an overlay frame, computed in one place.
//!
//! An overlay IP packet of `mtu` bytes leaves the node as
//! ```text
//! outer IP (20 | 40) | [UDP 8, encap = udp] | ESP SPI+seq 8 | IV 8
//!   | [inner IP 20 | 40, mode = tunnel] | UDP 8 | VXLAN 8 | Ethernet 14 | overlay packet (mtu)
//!   | padding 0..3 | pad length 1 | next header 1 | ICV 16
//! ```
//! Both AEADs (AES-256-GCM-16 and ChaCha20-Poly1305) have an 8-byte IV, a 16-byte ICV and no block
//! alignment beyond ESP's own 4-byte rule, so the cipher never changes the figure; it is still a
//! parameter so a future cipher cannot be forgotten here.

use mesh_config::{Cipher, Encap, Mode};

use crate::wire;

/// The IP version of the underlay (both ends of a pair always share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn of(address: std::net::IpAddr) -> Self {
        if address.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        }
    }

    pub fn header_len(self) -> usize {
        match self {
            IpVersion::V4 => wire::ipv4::HEADER_LEN,
            IpVersion::V6 => wire::ipv6::HEADER_LEN,
        }
    }
}

/// Everything that decides the size of the encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulation {
    pub ip_version: IpVersion,
    pub encap: Encap,
    pub mode: Mode,
    pub cipher: Cipher,
}

/// ESP's trailer must end on a 4-byte boundary (RFC 4303 §2.4).
const ESP_ALIGNMENT: usize = 4;
/// Pad length and next header bytes.
const ESP_TRAILER_FIXED: usize = 2;

impl Encapsulation {
    fn iv_len(self) -> usize {
        match self.cipher {
            Cipher::Aes256Gcm16 | Cipher::Chacha20Poly1305 => wire::esp::IV_LEN,
        }
    }

    fn icv_len(self) -> usize {
        match self.cipher {
            Cipher::Aes256Gcm16 | Cipher::Chacha20Poly1305 => wire::esp::ICV_LEN,
        }
    }

    /// Bytes between the ESP header+IV and the Ethernet frame: inner IP (tunnel) + UDP + VXLAN.
    pub fn inner_headers_len(self) -> usize {
        let inner_ip = match self.mode {
            Mode::Transport => 0,
            Mode::Tunnel => self.ip_version.header_len(),
        };
        inner_ip + wire::udp::HEADER_LEN + wire::vxlan::HEADER_LEN
    }

    /// Bytes the kernel puts in front of the ESP header (outer IP and, for `udp`, the UDP header).
    pub fn outer_headers_len(self) -> usize {
        let udp = match self.encap {
            Encap::Udp => wire::udp::HEADER_LEN,
            Encap::Esp => 0,
        };
        self.ip_version.header_len() + udp
    }

    /// Bytes of an ESP packet on the underlay other than plaintext, padding and the fixed trailer.
    fn framing_len(self) -> usize {
        self.outer_headers_len() + wire::esp::HEADER_LEN + self.iv_len() + self.icv_len()
    }

    /// Size on the underlay of an ESP packet carrying `plaintext` bytes of payload.
    pub fn sealed_len(self, plaintext: usize) -> usize {
        self.framing_len() + (plaintext + ESP_TRAILER_FIXED).next_multiple_of(ESP_ALIGNMENT)
    }

    /// Size on the underlay of an overlay packet of `overlay_len` bytes (L3, without its Ethernet header).
    pub fn underlay_len(self, overlay_len: usize) -> usize {
        self.sealed_len(self.inner_headers_len() + wire::ethernet::HEADER_LEN + overlay_len)
    }

    /// The largest ESP payload whose packet fits in `underlay_mtu` bytes (what a path-MTU probe
    /// of that size carries), if any does.
    pub fn largest_plaintext(self, underlay_mtu: usize) -> Option<usize> {
        let aligned = underlay_mtu.checked_sub(self.framing_len())? / ESP_ALIGNMENT * ESP_ALIGNMENT;
        aligned.checked_sub(ESP_TRAILER_FIXED)
    }

    /// The largest overlay MTU whose packets fit in `underlay_mtu` bytes, if any does.
    pub fn overlay_mtu(self, underlay_mtu: usize) -> Option<usize> {
        self.largest_plaintext(underlay_mtu)?.checked_sub(self.inner_headers_len() + wire::ethernet::HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Encapsulation> {
        let mut out = Vec::new();
        for ip_version in [IpVersion::V4, IpVersion::V6] {
            for encap in Encap::ALL {
                for mode in Mode::ALL {
                    for cipher in Cipher::ALL {
                        out.push(Encapsulation { ip_version, encap: *encap, mode: *mode, cipher: *cipher });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn overlay_mtu_table_for_1500() {
        // (ip, encap, mode) -> overlay MTU on a 1500-byte underlay, worked out by hand from the
        // layout in the module comment (see docs/mtu.md).
        let expected = [
            (IpVersion::V4, Encap::Udp, Mode::Transport, 1408),
            (IpVersion::V4, Encap::Udp, Mode::Tunnel, 1388),
            (IpVersion::V4, Encap::Esp, Mode::Transport, 1416),
            (IpVersion::V4, Encap::Esp, Mode::Tunnel, 1396),
            (IpVersion::V6, Encap::Udp, Mode::Transport, 1388),
            (IpVersion::V6, Encap::Udp, Mode::Tunnel, 1348),
            (IpVersion::V6, Encap::Esp, Mode::Transport, 1396),
            (IpVersion::V6, Encap::Esp, Mode::Tunnel, 1356),
        ];
        for (ip_version, encap, mode, mtu) in expected {
            for cipher in Cipher::ALL {
                let e = Encapsulation { ip_version, encap, mode, cipher: *cipher };
                assert_eq!(e.overlay_mtu(1500), Some(mtu), "{e:?}");
            }
        }
    }

    #[test]
    fn overlay_mtu_is_the_largest_that_fits() {
        for e in all() {
            for underlay in [576usize, 1280, 1500, 9000] {
                let mtu = e.overlay_mtu(underlay).unwrap();
                assert!(e.underlay_len(mtu) <= underlay, "{e:?} {underlay}");
                assert!(e.underlay_len(mtu + 1) > underlay, "{e:?} {underlay}");
            }
        }
    }

    #[test]
    fn largest_plaintext_is_the_largest_that_fits() {
        for e in all() {
            for underlay in 60usize..1600 {
                let Some(plaintext) = e.largest_plaintext(underlay) else {
                    assert!(e.sealed_len(0) > underlay, "{e:?} {underlay}");
                    continue;
                };
                assert!(e.sealed_len(plaintext) <= underlay, "{e:?} {underlay}");
                assert!(e.sealed_len(plaintext + 1) > underlay, "{e:?} {underlay}");
            }
        }
    }

    #[test]
    fn jumbo_underlay_gives_an_overlay_near_8900() {
        for e in all() {
            let mtu = e.overlay_mtu(9000).unwrap();
            assert!((8840..=8920).contains(&mtu), "{e:?}: {mtu}");
        }
    }

    #[test]
    fn tiny_underlay_has_no_overlay_mtu() {
        let e = all()[0];
        assert_eq!(e.overlay_mtu(50), None);
    }
}
