//! The virtio-net header (`struct virtio_net_hdr`, Linux `include/uapi/linux/virtio_net.h`) that
//! a TAP opened with `IFF_VNET_HDR` puts in front of every frame it hands out, and expects in
//! front of every frame written to it.
//!
//! # Size
//! The TAP's header size starts at `sizeof(struct virtio_net_hdr)`, 10 bytes, and changes only
//! with `TUNSETVNETHDRSZ` (12 adds the `num_buffers` field of `virtio_net_hdr_mrg_rxbuf`, which a
//! TAP never fills). We use the 10-byte form: [`HEADER_LEN`].
//!
//! # Byte order
//! The 16-bit fields are `__virtio16`. The TUN driver (`drivers/net/tun_vnet.h`, formerly in
//! `tun.c`) converts them with `tun_vnet_is_little_endian(flags)`, which is
//! `flags & TUN_VNET_LE || tun_vnet_legacy_is_little_endian(flags)`; the legacy rule is
//! `!(CONFIG_TUN_VNET_CROSS_LE && flags & TUN_VNET_BE) && virtio_legacy_is_little_endian()`, and
//! `virtio_legacy_is_little_endian()` (`include/linux/virtio_byteorder.h`) is true exactly when
//! the kernel is built `__LITTLE_ENDIAN`. So without any ioctl the header is in the CPU's byte
//! order ("legacy virtio"): little-endian on x86_64 and aarch64. `TUNSETVNETLE` with 1 makes it
//! little-endian on every host (it needs no kernel option, unlike `TUNSETVNETBE`). This module
//! always reads and writes little-endian: correct as is on little-endian hosts, and on a
//! big-endian host only after the TAP was set up with `TUNSETVNETLE`.
//!
//! # What the kernel puts in it (`virtio_net_hdr_from_skb`)
//! For a GSO skb: `gso_type` TCPV4 or TCPV6 (plus ECN when the skb has `SKB_GSO_TCP_ECN`),
//! `gso_size` the MSS, and `hdr_len` = `skb_headlen()`, which is only a hint of how much is
//! linear, not the header length: parse the headers, do not trust `hdr_len`. For a
//! `CHECKSUM_PARTIAL` skb (every GSO one, and small ones too when `TUN_F_CSUM` is on): flag
//! NEEDS_CSUM with `csum_start` (from the start of the frame, VLAN tag included) and
//! `csum_offset`; the checksum field then holds the pseudo-header sum, not a checksum.

use crate::wire::{Error, Result};

/// Length of `struct virtio_net_hdr`, the TAP's default header size.
pub const HEADER_LEN: usize = 10;

/// Bits of the `flags` field.
pub mod flags {
    /// The checksum is not filled in: sum from `csum_start` to the end of the frame and store
    /// the result at `csum_start + csum_offset`.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum was verified (receive side only; a TAP never reads it on write).
    #[cfg(test)]
    pub const DATA_VALID: u8 = 2;
}

/// Values of the `gso_type` field.
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    /// Legacy UDP fragmentation offload (UFO).
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO), IPv4 and IPv6; kernel 6.2 and later.
    pub const UDP_L4: u8 = 5;
    /// Flag bit: the TCP super-frame has CWR set (it must stay on the first segment only).
    pub const ECN: u8 = 0x80;
}

/// A fixed-size field: a byte range within the header.
type Field = core::ops::Range<usize>;

mod field {
    use super::Field;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
}

fn read_le16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_le_bytes([b[0], b[1]])
}

fn write_le16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_le_bytes());
}

crate::wire::view! {
    /// A read/write view of a virtio-net header followed by an Ethernet frame, as one `read` from
    /// a TAP with `IFF_VNET_HDR` returns it.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Nothing beyond the length to refuse; [`VirtioNetHeader::parse`] checks the fields.
    fn check_fields(&self) -> Result<()> {
        Ok(())
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The raw `gso_type`, ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    pub fn hdr_len(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::HDR_LEN)
    }

    pub fn gso_size(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::GSO_SIZE)
    }

    pub fn csum_start(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::CSUM_START)
    }

    pub fn csum_offset(&self) -> u16 {
        read_le16(self.buffer.as_ref(), field::CSUM_OFFSET)
    }

    /// The Ethernet frame after the header.
    #[cfg(test)]
    pub fn frame(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    pub fn set_gso_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = value;
    }

    pub fn set_hdr_len(&mut self, value: u16) {
        write_le16(self.buffer.as_mut(), field::HDR_LEN, value);
    }

    pub fn set_gso_size(&mut self, value: u16) {
        write_le16(self.buffer.as_mut(), field::GSO_SIZE, value);
    }

    pub fn set_csum_start(&mut self, value: u16) {
        write_le16(self.buffer.as_mut(), field::CSUM_START, value);
    }

    pub fn set_csum_offset(&mut self, value: u16) {
        write_le16(self.buffer.as_mut(), field::CSUM_OFFSET, value);
    }
}

/// What kind of segmentation offload a frame asks for, without the ECN bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    None,
    TcpV4,
    TcpV6,
    /// UDP segmentation (USO); a TAP hands these out only with `TUN_F_USO4/6` on.
    UdpL4,
    /// Legacy UFO; a TAP hands these out only with `TUN_F_UFO` on.
    Udp,
}

impl Gso {
    fn from_raw(raw: u8) -> Option<Gso> {
        Some(match raw & !gso::ECN {
            gso::NONE => Gso::None,
            gso::TCPV4 => Gso::TcpV4,
            gso::TCPV6 => Gso::TcpV6,
            gso::UDP_L4 => Gso::UdpL4,
            gso::UDP => Gso::Udp,
            _ => return None,
        })
    }

    fn to_raw(self) -> u8 {
        match self {
            Gso::None => gso::NONE,
            Gso::TcpV4 => gso::TCPV4,
            Gso::TcpV6 => gso::TCPV6,
            Gso::UdpL4 => gso::UDP_L4,
            Gso::Udp => gso::UDP,
        }
    }
}

/// A virtio-net header's fields, checked for consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioNetHeader {
    /// See [`flags`].
    pub flags: u8,
    pub gso: Gso,
    /// The [`gso::ECN`] bit: the super-frame's CWR belongs on its first segment only.
    pub ecn: bool,
    /// Ethernet + IP + TCP header length (only a hint in frames the kernel hands out).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS); 0 when `gso` is `None`.
    pub gso_size: u16,
    /// Where the checksum sum starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHeader {
    /// The header of a frame that needs nothing done: no GSO, checksum complete.
    pub const NONE: VirtioNetHeader = VirtioNetHeader {
        flags: 0,
        gso: Gso::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads and checks the header at the start of `packet`: a known GSO type, a nonzero
    /// `gso_size` with GSO (the kernel rejects zero too), and no ECN bit without GSO.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<VirtioNetHeader> {
        let raw = packet.gso_type();
        let gso = Gso::from_raw(raw).ok_or(Error::Malformed("unknown virtio-net GSO type"))?;
        let ecn = raw & gso::ECN != 0;
        if gso == Gso::None && ecn {
            return Err(Error::Malformed("virtio-net ECN bit without GSO"));
        }
        if gso != Gso::None && packet.gso_size() == 0 {
            return Err(Error::Malformed("virtio-net GSO with a zero gso_size"));
        }
        Ok(VirtioNetHeader {
            flags: packet.flags(),
            gso,
            ecn,
            hdr_len: packet.hdr_len(),
            gso_size: packet.gso_size(),
            csum_start: packet.csum_start(),
            csum_offset: packet.csum_offset(),
        })
    }

    /// True if the frame's checksum is left for the reader to complete.
    pub fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }

    /// Writes `HEADER_LEN` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_flags(self.flags);
        packet.set_gso_type(self.gso.to_raw() | if self.ecn { gso::ECN } else { 0 });
        packet.set_hdr_len(self.hdr_len);
        packet.set_gso_size(self.gso_size);
        packet.set_csum_start(self.csum_start);
        packet.set_csum_offset(self.csum_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A header for an IPv4 TSO super-frame with CWR set, little-endian: NEEDS_CSUM, TCPV4|ECN,
    // hdr_len 66, gso_size 1448 (0x05a8), csum_start 34, csum_offset 16.
    const TSO_HEADER: [u8; HEADER_LEN] = [0x01, 0x81, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    #[test]
    fn parse_every_field() {
        let mut bytes = TSO_HEADER.to_vec();
        bytes.extend_from_slice(&[0xaa; 3]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.flags(), flags::NEEDS_CSUM);
        assert_eq!(p.gso_type(), gso::TCPV4 | gso::ECN);
        assert_eq!(p.hdr_len(), 66);
        assert_eq!(p.gso_size(), 1448);
        assert_eq!(p.csum_start(), 34);
        assert_eq!(p.csum_offset(), 16);
        assert_eq!(p.frame(), &[0xaa; 3]);
        let h = VirtioNetHeader::parse(&p).unwrap();
        assert_eq!(
            h,
            VirtioNetHeader {
                flags: flags::NEEDS_CSUM,
                gso: Gso::TcpV4,
                ecn: true,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(h.needs_csum());
        let mut out = [0xEE; HEADER_LEN];
        h.emit(&mut out);
        assert_eq!(out, TSO_HEADER);
    }

    #[test]
    fn none_is_all_zero() {
        let mut out = [0xEE; HEADER_LEN];
        VirtioNetHeader::NONE.emit(&mut out);
        assert_eq!(out, [0; HEADER_LEN]);
        assert_eq!(VirtioNetHeader::parse(&Packet::new_unchecked(&out[..])), Ok(VirtioNetHeader::NONE));
        assert!(!VirtioNetHeader::NONE.needs_csum());
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Packet::new_checked(&TSO_HEADER[..9]).unwrap_err(), Error::Truncated);
        let parse = |bytes: [u8; HEADER_LEN]| VirtioNetHeader::parse(&Packet::new_unchecked(&bytes[..]));
        let mut bytes = TSO_HEADER;
        bytes[1] = 2;
        assert_eq!(parse(bytes), Err(Error::Malformed("unknown virtio-net GSO type")));
        bytes[1] = gso::ECN;
        assert_eq!(parse(bytes), Err(Error::Malformed("virtio-net ECN bit without GSO")));
        let mut bytes = TSO_HEADER;
        bytes[4..6].fill(0);
        assert_eq!(parse(bytes), Err(Error::Malformed("virtio-net GSO with a zero gso_size")));
        for (raw, gso) in [(3, Gso::Udp), (4, Gso::TcpV6), (5, Gso::UdpL4)] {
            let mut bytes = TSO_HEADER;
            bytes[1] = raw;
            assert_eq!(parse(bytes).unwrap().gso, gso);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                if let Ok(h) = VirtioNetHeader::parse(&p) {
                    let mut out = [0u8; HEADER_LEN];
                    h.emit(&mut out);
                    prop_assert_eq!(&out[..], &bytes[..HEADER_LEN]);
                }
            }
        }
    }
}
