//! The receive side: consecutive TCP segments of one flow, decrypted from one batch, merged
//! back into one super-frame that is written to the TAP once, with a virtio-net header asking
//! the kernel for TCPV4/TCPV6 GSO and NEEDS_CSUM.
//!
//! The rules follow Linux GRO (`tcp_gro_receive`, `inet_gro_receive`, `ipv6_gro_receive`) and
//! err on the side of not merging:
//! - only IPv4 without options and not fragmented, or IPv6 with TCP right after the fixed
//!   header; at most two VLAN tags; the Ethernet header, IP addresses and ports identify the flow;
//! - a segment joins a held one only if: its sequence number is the next expected; its
//!   acknowledgment number, window, data offset, option bytes (timestamps included), flags
//!   (apart from PSH) and the IP fields that must not change (TOS / traffic class, flow label,
//!   TTL / hop limit, IPv4 flags) are the same as the first segment's; its payload is at most
//!   the first segment's (the MSS); the IPv4 identification goes up by one per segment, or stays
//!   the same when DF is set; its TCP checksum is right (when [`Config::verify_checksums`]);
//! - only segments with data and ACK, and no SYN, RST, URG or CWR, are merged (a segment with
//!   CWR goes up alone, as the kernel's GRO sends it, so the output never needs the ECN GSO
//!   bit); a segment shorter than the MSS or with PSH or FIN ends the super-frame, which is then
//!   written at once.
//!
//! Anything else (other protocols, pure ACKs, segments that do not fit) goes to the TAP
//! unchanged with a zero virtio-net header; a held super-frame of the same flow is written
//! first, so a flow's frames keep their order. Frames of different flows may be reordered,
//! as GRO does.
//!
//! The output is what `tcp_gro_complete` makes: IPv4 total length and header checksum, or
//! IPv6 payload length, fixed; the first segment's headers with PSH and FIN from the last; the
//! pseudo-header sum over the whole TCP length in the checksum field; and a virtio-net header
//! with `gso_size` = the MSS, `hdr_len` = the headers' length, `csum_start` = the TCP header
//! and `csum_offset` = 16. The kernel's own GRO output differs only in `hdr_len`, where it
//! puts `skb_headlen()` (see `kernel_tests.rs`).
//!
//! A segment reaches a slot by one copy: [`Coalescer::push`] copies its payload in, or the
//! receive path decrypts it straight to the end of the super-frame the previous segment joined
//! (a [`Landing`]) and the segment joins there with no copy at all.

use std::ops::{DerefMut, Range};

use super::headers::{self, IpVersion, Strictness, TcpFrame};
use super::virtio_net::{self, flags as vflags, Gso, VirtioNetHeader};
use crate::wire::checksum::PseudoHeader;
use crate::wire::tcp::PROTOCOL_TCP;
use crate::wire::tcp::{self, flags};
use crate::wire::{checksum, ethernet, ipv4, ipv6};

/// The largest frame a slot holds: Ethernet with two VLAN tags, an IPv6 header and the largest
/// IPv6 payload (an IPv4 packet is smaller).
pub const MAX_FRAME_LEN: usize = ethernet::HEADER_LEN + 8 + ipv6::HEADER_LEN + 65_535;
/// Bytes of one slot: a virtio-net header and the frame.
const SLOT_LEN: usize = virtio_net::HEADER_LEN + MAX_FRAME_LEN;
/// The most an IP length field holds.
const MAX_IP_LEN: usize = 65_535;
/// The most bytes a [`Landing`] puts in front of a TCP payload, over the held super-frame's
/// last payload bytes (saved and put back): encapsulation (an ESP tunnel-mode IPv4 header with
/// options, UDP, VXLAN: 76) and the frame's headers (Ethernet with two tags, IPv6, the longest
/// TCP header: 162).
const MAX_PREFIX: usize = 256;

/// How a [`Coalescer`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Flows held at once; each costs one 64 KiB buffer. At least 1.
    pub slots: usize,
    /// Check each TCP checksum before merging, as GRO does: the merged frame goes to the
    /// kernel marked NEEDS_CSUM, so it will not check them again. A segment that fails is
    /// passed on unchanged for the kernel to drop.
    pub verify_checksums: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { slots: 4, verify_checksums: true }
    }
}

/// Counters since the coalescer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames pushed.
    pub frames_in: u64,
    /// Frames emitted (merged or not).
    pub frames_out: u64,
    /// Emitted frames made of two segments or more.
    pub super_frames: u64,
    /// Segments that went into those.
    pub merged_segments: u64,
    /// Segments not merged because their TCP checksum was wrong.
    pub bad_checksums: u64,
}

/// Merges TCP segments into super-frames. Owns its buffers, allocated once in [`Coalescer::new`].
///
/// Push every frame of a receive batch, then [`Coalescer::flush`] before waiting for the next
/// one: a held segment waits for nothing else.
pub struct Coalescer {
    slots: Vec<Slot>,
    verify_checksums: bool,
    clock: u64,
    stats: Stats,
    /// The slot the last pushed or joined segment went into: where the next one most likely goes.
    last: Option<usize>,
    /// The bytes a [`Landing`] covers, while it lasts (here, so that a landing stays small).
    under_landing: [u8; MAX_PREFIX],
}

struct Slot {
    /// A virtio-net header, then the super-frame so far.
    buf: Box<[u8]>,
    held: Option<Held>,
}

/// The super-frame a slot is building.
#[derive(Debug, Clone, Copy)]
struct Held {
    tcp: TcpFrame,
    /// Frame bytes in the slot after the virtio-net header.
    len: usize,
    mss: usize,
    segments: usize,
    next_sequence: u32,
    last_identification: u16,
    /// The identification's step per segment, fixed by the second segment: 1, or 0 under DF.
    identification_step: Option<u16>,
    /// PSH and FIN of the last segment, which go into the super-frame's flags.
    last_end_flags: u16,
    /// True once the first segment's checksum was checked (when it is, lazily, on the first merge).
    head_verified: bool,
    /// When the slot was filled, to choose which to give up when all are busy.
    born: u64,
}

/// What a pushed frame is, from its headers.
#[derive(Debug, Clone, Copy)]
struct Segment {
    tcp: TcpFrame,
    sequence: u32,
    flags: u16,
    identification: u16,
    /// Data, ACK, nothing forbidden, a correct IPv4 header checksum.
    holdable: bool,
}

impl Segment {
    fn parse(frame: &[u8]) -> Option<Segment> {
        let tcp = headers::parse(frame, Strictness::Plain).ok()?;
        let segment = tcp::Packet::new_unchecked(&frame[tcp.l4..tcp.end]);
        let (sequence, flags) = (segment.sequence_number(), segment.flags());
        let (identification, ip_ok) = match tcp.ip {
            IpVersion::V4 => {
                let ip = ipv4::Packet::new_unchecked(&frame[tcp.l3..]);
                (ip.identification(), ip.verify_checksum())
            }
            IpVersion::V6 => (0, true),
        };
        const ALLOWED: u16 = flags::ACK | flags::PSH | flags::FIN | flags::ECE | flags::AE;
        let holdable = ip_ok && tcp.payload_len() > 0 && flags & flags::ACK != 0 && flags & !ALLOWED == 0;
        Some(Segment { tcp, sequence, flags, identification, holdable })
    }

    /// PSH or FIN: nothing may follow this segment in a super-frame.
    fn end_flags(&self) -> u16 {
        self.flags & (flags::PSH | flags::FIN)
    }
}

/// True if `a` and `b` (frames whose headers parsed to the same offsets) belong to one flow:
/// same Ethernet header and tags, IP addresses and ports.
fn same_flow(a: &[u8], b: &[u8], tcp: &TcpFrame) -> bool {
    let addresses = match tcp.ip {
        IpVersion::V4 => tcp.l3 + 12..tcp.l3 + 20,
        IpVersion::V6 => tcp.l3 + 8..tcp.l3 + 40,
    };
    a[..tcp.l3] == b[..tcp.l3] && a[addresses.clone()] == b[addresses] && a[tcp.l4..tcp.l4 + 4] == b[tcp.l4..tcp.l4 + 4]
}

fn tcp_checksum_ok(frame: &[u8], tcp: &TcpFrame, pseudo: PseudoHeader, payload: &[u8]) -> bool {
    let sum = checksum::combine(&[
        pseudo.with_len(tcp.tcp_len()),
        checksum::data(&frame[tcp.l4..tcp.payload]),
        checksum::data(payload),
    ]);
    sum == 0xFFFF
}

fn pseudo_of(frame: &[u8], tcp: &TcpFrame) -> PseudoHeader {
    match tcp.ip {
        IpVersion::V4 => {
            let ip = ipv4::Packet::new_unchecked(&frame[tcp.l3..]);
            PseudoHeader::v4(ip.source_address(), ip.destination_address(), PROTOCOL_TCP)
        }
        IpVersion::V6 => {
            let ip = ipv6::Packet::new_unchecked(&frame[tcp.l3..]);
            PseudoHeader::v6(ip.source_address(), ip.destination_address(), PROTOCOL_TCP)
        }
    }
}

/// What checking a segment against a slot's super-frame found.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    joins: bool,
    /// The super-frame's first segment's checksum is known to be right.
    head_verified: bool,
    bad_checksum: bool,
}

impl Slot {
    fn frame(&self) -> &[u8] {
        &self.buf[virtio_net::HEADER_LEN..]
    }

    /// The IP length the super-frame would have with `more` payload bytes added.
    fn ip_len_with(&self, held: &Held, more: usize) -> usize {
        let fixed = match held.tcp.ip {
            IpVersion::V4 => 0,
            IpVersion::V6 => ipv6::HEADER_LEN,
        };
        held.len + more - held.tcp.l3 - fixed
    }

    /// True if segment `s` of `frame` may be appended to what the slot holds (checksum aside).
    fn accepts(&self, held: &Held, frame: &[u8], s: &Segment) -> bool {
        let h = self.frame();
        let (l3, l4, hl) = (held.tcp.l3, held.tcp.l4, held.tcp.payload);
        if !s.holdable || s.tcp.payload != hl || s.sequence != held.next_sequence {
            return false;
        }
        let len = s.tcp.payload_len();
        if len > held.mss || self.ip_len_with(held, len) > MAX_IP_LEN {
            return false;
        }
        let ip_same = match held.tcp.ip {
            // TOS; flags (DF, reserved; MF is known clear); TTL.
            IpVersion::V4 => {
                h[l3 + 1] == frame[l3 + 1] && h[l3 + 6] & 0xE0 == frame[l3 + 6] & 0xE0 && h[l3 + 8] == frame[l3 + 8]
            }
            // Version, traffic class, flow label; hop limit.
            IpVersion::V6 => h[l3..l3 + 4] == frame[l3..l3 + 4] && h[l3 + 7] == frame[l3 + 7],
        };
        if !ip_same {
            return false;
        }
        if held.tcp.ip == IpVersion::V4 {
            let step = s.identification.wrapping_sub(held.last_identification);
            let dont_fragment = h[l3 + 6] & 0x40 != 0;
            let ok = match held.identification_step {
                Some(expected) => step == expected,
                None => step == 1 || (step == 0 && dont_fragment),
            };
            if !ok {
                return false;
            }
        }
        // Acknowledgment number; then data offset, flags and window, where only PSH and FIN
        // (which only a last segment has) may differ; then the options.
        let end_mask = u32::from(flags::PSH | flags::FIN) << 16;
        let word = |b: &[u8]| u32::from_be_bytes([b[l4 + 12], b[l4 + 13], b[l4 + 14], b[l4 + 15]]);
        h[l4 + 8..l4 + 12] == frame[l4 + 8..l4 + 12]
            && (word(h) ^ word(frame)) & !end_mask == 0
            && h[l4 + tcp::HEADER_LEN..hl] == frame[l4 + tcp::HEADER_LEN..hl]
    }

    /// True if the TCP checksum of the super-frame's first (and only) segment is right.
    fn head_ok(&self, held: &Held) -> bool {
        let head = &self.frame()[..held.len];
        tcp_checksum_ok(head, &held.tcp, pseudo_of(head, &held.tcp), &head[held.tcp.payload..])
    }

    /// Whether segment `s` of `frame` joins the super-frame, its checksums checked if `verify`
    /// (the first segment's once, when the second joins).
    fn verdict(&self, held: &Held, frame: &[u8], s: &Segment, verify: bool) -> Verdict {
        let refused = |head_verified, bad_checksum| Verdict { joins: false, head_verified, bad_checksum };
        if !self.accepts(held, frame, s) {
            return refused(held.head_verified, false);
        }
        if !verify {
            return Verdict { joins: true, head_verified: held.head_verified, bad_checksum: false };
        }
        if !held.head_verified && !self.head_ok(held) {
            return refused(false, true);
        }
        let pseudo = pseudo_of(self.frame(), &held.tcp);
        if !tcp_checksum_ok(frame, &s.tcp, pseudo, &frame[s.tcp.payload..s.tcp.end]) {
            return refused(true, true);
        }
        Verdict { joins: true, head_verified: true, bad_checksum: false }
    }
}

impl Coalescer {
    /// Allocates `config.slots` buffers of [`MAX_FRAME_LEN`] and a header each.
    ///
    /// # Panics
    /// If `config.slots` is 0.
    pub fn new(config: Config) -> Coalescer {
        assert!(config.slots > 0, "a coalescer needs at least one slot");
        let slots =
            (0..config.slots).map(|_| Slot { buf: vec![0u8; SLOT_LEN].into_boxed_slice(), held: None }).collect();
        Coalescer {
            slots,
            verify_checksums: config.verify_checksums,
            clock: 0,
            stats: Stats::default(),
            last: None,
            under_landing: [0; MAX_PREFIX],
        }
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// True if no segment is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|slot| slot.held.is_none())
    }

    /// Offers one received frame. `packet` is [`virtio_net::HEADER_LEN`] bytes of room, which
    /// this may overwrite, followed by the Ethernet frame. Calls `emit` with each virtio-net
    /// header + frame that is ready to be written to the TAP, in order: the pushed frame
    /// itself (from `packet`) if it is not held, and any super-frame (from the coalescer's
    /// buffers) that it completes or displaces.
    ///
    /// # Panics
    /// If `packet` is shorter than the virtio-net header.
    pub fn push(&mut self, packet: &mut [u8], emit: &mut impl FnMut(&[u8])) {
        assert!(packet.len() >= virtio_net::HEADER_LEN, "no room for the virtio-net header");
        self.stats.frames_in += 1;
        let frame = &packet[virtio_net::HEADER_LEN..];
        let Some(segment) = Segment::parse(frame) else {
            return self.pass(packet, emit);
        };
        let found = self.slots.iter().position(|slot| {
            slot.held.is_some_and(|held| held.tcp.l3 == segment.tcp.l3 && held.tcp.ip == segment.tcp.ip)
                && same_flow(slot.frame(), frame, &segment.tcp)
        });
        if let Some(index) = found {
            if self.append(index, frame, &segment) {
                return self.flush_if_done(index, emit);
            }
            self.flush_slot(index, emit);
        }
        // A segment that cannot be followed by another goes straight on.
        if !segment.holdable || segment.end_flags() != 0 {
            return self.pass(packet, emit);
        }
        let index = match self.slots.iter().position(|slot| slot.held.is_none()) {
            Some(index) => index,
            None => {
                let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].held.map_or(0, |h| h.born));
                let oldest = oldest.expect("at least one slot");
                self.flush_slot(oldest, emit);
                oldest
            }
        };
        let slot = &mut self.slots[index];
        let end = segment.tcp.end;
        slot.buf[virtio_net::HEADER_LEN..virtio_net::HEADER_LEN + end].copy_from_slice(&frame[..end]);
        self.clock += 1;
        self.last = Some(index);
        slot.held = Some(Held {
            tcp: segment.tcp,
            len: end,
            mss: segment.tcp.payload_len(),
            segments: 1,
            next_sequence: segment.sequence.wrapping_add(segment.tcp.payload_len() as u32),
            last_identification: segment.identification,
            identification_step: None,
            last_end_flags: 0,
            head_verified: false,
            born: self.clock,
        });
    }

    /// Writes out every held super-frame, oldest first. Call it at the end of each batch.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        while let Some(index) = (0..self.slots.len())
            .filter(|&i| self.slots[i].held.is_some())
            .min_by_key(|&i| self.slots[i].held.map(|h| h.born))
        {
            self.flush_slot(index, emit);
        }
    }

    /// Sends a frame on unchanged, after a zero virtio-net header.
    fn pass(&mut self, packet: &mut [u8], emit: &mut impl FnMut(&[u8])) {
        VirtioNetHeader::NONE.emit(packet);
        self.stats.frames_out += 1;
        emit(packet);
    }

    /// Appends `segment` to slot `index` if it may go there; false (and nothing changed) if not.
    fn append(&mut self, index: usize, frame: &[u8], segment: &Segment) -> bool {
        let slot = &self.slots[index];
        let Some(held) = slot.held else { return false };
        if !self.take(index, slot.verdict(&held, frame, segment, self.verify_checksums)) {
            return false;
        }
        let start = virtio_net::HEADER_LEN + held.len;
        let payload = &frame[segment.tcp.payload..segment.tcp.end];
        self.slots[index].buf[start..start + payload.len()].copy_from_slice(payload);
        self.extend(index, segment);
        true
    }

    /// Counts what a verdict on slot `index` found and keeps its checksum knowledge; true if the
    /// segment joins.
    fn take(&mut self, index: usize, verdict: Verdict) -> bool {
        self.stats.bad_checksums += u64::from(verdict.bad_checksum);
        if let Some(held) = &mut self.slots[index].held {
            held.head_verified = verdict.head_verified;
        }
        verdict.joins
    }

    /// Counts `segment`, whose payload now follows the super-frame in slot `index`, into it.
    fn extend(&mut self, index: usize, segment: &Segment) {
        let Some(held) = &mut self.slots[index].held else { return };
        let len = segment.tcp.payload_len();
        held.len += len;
        held.segments += 1;
        held.next_sequence = held.next_sequence.wrapping_add(len as u32);
        held.identification_step.get_or_insert(segment.identification.wrapping_sub(held.last_identification));
        held.last_identification = segment.identification;
        held.last_end_flags = segment.end_flags();
        self.last = Some(index);
    }

    /// Writes slot `index` out if nothing more can join it: its last segment was short or
    /// had PSH or FIN, or the IP length is at its maximum. (One that has room for less than a full
    /// segment stays: the flow's last, short segment may still fit.)
    fn flush_if_done(&mut self, index: usize, emit: &mut impl FnMut(&[u8])) {
        let slot = &self.slots[index];
        let Some(held) = slot.held else { return };
        let short = (held.len - held.tcp.payload) % held.mss != 0;
        if held.last_end_flags != 0 || short || slot.ip_len_with(&held, 1) > MAX_IP_LEN {
            self.flush_slot(index, emit);
        }
    }

    fn flush_slot(&mut self, index: usize, emit: &mut impl FnMut(&[u8])) {
        let slot = &mut self.slots[index];
        let Some(held) = slot.held.take() else { return };
        self.stats.frames_out += 1;
        let (header_room, frame) = slot.buf.split_at_mut(virtio_net::HEADER_LEN);
        let frame = &mut frame[..held.len];
        if held.segments == 1 {
            VirtioNetHeader::NONE.emit(header_room);
            return emit(&slot.buf[..virtio_net::HEADER_LEN + held.len]);
        }
        self.stats.super_frames += 1;
        self.stats.merged_segments += held.segments as u64;
        let TcpFrame { ip, l3, l4, payload: hl, .. } = held.tcp;
        let gso = match ip {
            IpVersion::V4 => {
                let mut packet = ipv4::Packet::new_unchecked(&mut frame[l3..]);
                packet.set_total_length((held.len - l3) as u16);
                packet.fill_checksum();
                Gso::TcpV4
            }
            IpVersion::V6 => {
                let mut packet = ipv6::Packet::new_unchecked(&mut frame[l3..]);
                packet.set_payload_length((held.len - l3 - ipv6::HEADER_LEN) as u16);
                Gso::TcpV6
            }
        };
        let pseudo = pseudo_of(frame, &held.tcp);
        let mut segment = tcp::Packet::new_unchecked(&mut frame[l4..]);
        let first_flags = segment.flags();
        segment.set_flags(first_flags | held.last_end_flags);
        segment.set_checksum(pseudo.with_len(held.len - l4));
        VirtioNetHeader {
            flags: vflags::NEEDS_CSUM,
            gso,
            ecn: false,
            hdr_len: hl as u16,
            gso_size: held.mss as u16,
            csum_start: l4 as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        }
        .emit(header_room);
        emit(&slot.buf[..virtio_net::HEADER_LEN + held.len]);
    }
}

/// Room for an ESP plaintext in the slot the last segment went into, placed so that if the
/// plaintext is the next segment of that slot's flow, behind the same encapsulation and header
/// lengths, its TCP payload lies right after the super-frame: it then joins with no copy
/// ([`Landing::join`]). The plaintext starts over the super-frame's last payload bytes; those
/// are saved and put back. A landing that ends without a join (the plaintext did not
/// authenticate, is no segment of the flow, or does not follow) puts them back too and wipes
/// what was decrypted: nothing of it stays in the slot.
pub struct Landing<C: DerefMut<Target = Coalescer>> {
    coalescer: C,
    index: usize,
    /// The plaintext's place in the slot's buffer.
    plaintext: Range<usize>,
    /// Bytes of encapsulation in front of the frame in the plaintext.
    encap_len: usize,
    /// The plaintext's part in front of the TCP payload, over the super-frame's last bytes
    /// (saved in `Coalescer::under_landing`).
    prefix_len: usize,
    joined: bool,
}

impl<C: DerefMut<Target = Coalescer>> Landing<C> {
    /// Room for `len` bytes of plaintext whose frame starts after `encap_len` bytes, at the end of
    /// the slot the last segment went into; None if that slot holds nothing, or too little
    /// payload to cover, or has no room for `len` bytes there.
    pub fn at_tail(mut coalescer: C, encap_len: usize, len: usize) -> Option<Self> {
        let Coalescer { slots, under_landing, last, verify_checksums: verify, .. } = &mut *coalescer;
        let index = (*last)?;
        let slot = &mut slots[index];
        let held = slot.held?;
        let prefix_len = encap_len + held.tcp.payload;
        // Only payload is covered: the held headers are compared with the new segment's.
        if prefix_len > MAX_PREFIX || held.len - held.tcp.payload < prefix_len {
            return None;
        }
        let start = virtio_net::HEADER_LEN + held.len - prefix_len;
        if len < prefix_len || start + len > slot.buf.len() {
            return None;
        }
        // The first segment's checksum, when it is checked, is checked before the plaintext
        // covers its last bytes (a bad one is found again, and counted, by `push`).
        if *verify && !held.head_verified {
            if !slot.head_ok(&held) {
                return None;
            }
            slot.held = Some(Held { head_verified: true, ..held });
        }
        under_landing[..prefix_len].copy_from_slice(&slot.buf[start..start + prefix_len]);
        let plaintext = start..start + len;
        Some(Landing { coalescer, index, plaintext, encap_len, prefix_len, joined: false })
    }

    /// Where the plaintext goes (its bytes are the super-frame's until it is written).
    pub fn plaintext(&mut self) -> &mut [u8] {
        &mut self.coalescer.slots[self.index].buf[self.plaintext.clone()]
    }

    /// Adds the frame at `frame` in the plaintext to the super-frame, as [`Coalescer::push`]
    /// would have, and calls `emit` if that completes it; false, and nothing changed, if the
    /// frame does not continue it right here (push it then, from a copy of the plaintext).
    /// Call it only once the plaintext is authenticated.
    pub fn join(&mut self, frame: Range<usize>, emit: &mut impl FnMut(&[u8])) -> bool {
        let at = self.plaintext.start;
        if self.joined || frame.start != self.encap_len || frame.end > self.plaintext.len() {
            return false;
        }
        let coalescer = &mut *self.coalescer;
        let slot = &coalescer.slots[self.index];
        let Some(held) = slot.held else { return false };
        let frame = &slot.buf[at + frame.start..at + frame.end];
        let Some(segment) = Segment::parse(frame) else { return false };
        let same_offsets = segment.tcp.l3 == held.tcp.l3 && segment.tcp.ip == held.tcp.ip;
        if !same_offsets || !same_flow(slot.frame(), frame, &segment.tcp) {
            return false;
        }
        // accepts() also wants the same header length, so the payload is where it belongs.
        // A refusal is not counted here: `push` finds it again.
        let verdict = slot.verdict(&held, frame, &segment, coalescer.verify_checksums);
        if !verdict.joins {
            return false;
        }
        coalescer.take(self.index, verdict);
        let Coalescer { slots, under_landing, .. } = &mut *coalescer;
        slots[self.index].buf[at..at + self.prefix_len].copy_from_slice(&under_landing[..self.prefix_len]);
        self.joined = true;
        coalescer.stats.frames_in += 1;
        coalescer.extend(self.index, &segment);
        coalescer.flush_if_done(self.index, emit);
        true
    }
}

impl<C: DerefMut<Target = Coalescer>> Drop for Landing<C> {
    fn drop(&mut self) {
        if self.joined {
            return;
        }
        let (at, prefix_len) = (self.plaintext.start, self.prefix_len);
        let Coalescer { slots, under_landing, .. } = &mut *self.coalescer;
        let buf = &mut slots[self.index].buf;
        buf[at..at + prefix_len].copy_from_slice(&under_landing[..prefix_len]);
        buf[at + prefix_len..self.plaintext.end].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::{partial_checksum_v4, segment_into};
    use super::super::testutil::{self, build, FrameSpec, PartialOrFull};
    use super::*;
    use proptest::prelude::*;

    const HL: usize = virtio_net::HEADER_LEN;

    fn with_room(frame: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xEE; HL];
        packet.extend_from_slice(frame);
        packet
    }

    /// Pushes every frame, flushes, and returns what came out as (header, frame) pairs.
    fn run(coalescer: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<(VirtioNetHeader, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |bytes: &[u8]| {
            let header = VirtioNetHeader::parse(&virtio_net::Packet::new_checked(bytes).unwrap()).unwrap();
            out.push((header, bytes[HL..].to_vec()));
        };
        for frame in frames {
            coalescer.push(&mut with_room(frame), &mut emit);
        }
        coalescer.flush(&mut emit);
        assert!(coalescer.is_empty());
        out
    }

    fn segments_of(spec: &FrameSpec, mss: usize) -> Vec<Vec<u8>> {
        (0..spec.payload_len.div_ceil(mss))
            .map(|i| {
                let len = mss.min(spec.payload_len - i * mss);
                let mut seg = spec.slice(i * mss, len);
                seg.identification = spec.identification.wrapping_add(i as u16);
                if i > 0 {
                    seg.flags &= !flags::CWR;
                }
                if (i + 1) * mss < spec.payload_len {
                    seg.flags &= !flags::PSH;
                }
                build(&seg)
            })
            .collect()
    }

    fn gso_header(spec: &FrameSpec, mss: usize) -> VirtioNetHeader {
        let l4 = match spec.ip {
            IpVersion::V4 => 34,
            IpVersion::V6 => 54,
        };
        VirtioNetHeader {
            flags: vflags::NEEDS_CSUM,
            gso: if spec.ip == IpVersion::V4 { Gso::TcpV4 } else { Gso::TcpV6 },
            ecn: false,
            hdr_len: (l4 + 20 + spec.tcp_options.len()) as u16,
            gso_size: mss as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        }
    }

    #[test]
    fn segment_then_coalesce_is_the_identity_ipv4() {
        let spec = FrameSpec {
            flags: flags::ACK | flags::PSH,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v4(65_535 - 20 - 32)
        };
        let superframe = build(&spec);
        let header = gso_header(&spec, 1448);
        let mut segments = Vec::new();
        let mut buf = vec![0u8; 2000];
        segment_into(&header, &superframe, &mut buf, 0, |b, len| segments.push(b[..len].to_vec())).unwrap();
        assert_eq!(segments, segments_of(&FrameSpec { checksum: PartialOrFull::Full, ..spec.clone() }, 1448));

        let mut coalescer = Coalescer::new(Config::default());
        let out = run(&mut coalescer, &segments);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, header);
        assert_eq!(out[0].1, superframe);
        // The checksum field holds the kernel's pseudo-header sum over the whole TCP length.
        let field = u16::from_be_bytes([out[0].1[50], out[0].1[51]]);
        assert_eq!(field, partial_checksum_v4(testutil::V4_A, testutil::V4_B, 65_535 - 20));
        assert_eq!(
            coalescer.stats(),
            Stats { frames_in: 46, frames_out: 1, super_frames: 1, merged_segments: 46, bad_checksums: 0 }
        );
    }

    #[test]
    fn segment_then_coalesce_is_the_identity_ipv6() {
        let spec = FrameSpec { checksum: PartialOrFull::Partial, ..FrameSpec::v6(65_535 - 32) };
        let superframe = build(&spec);
        let header = gso_header(&spec, 1428);
        let mut segments = Vec::new();
        let mut buf = vec![0u8; 2000];
        segment_into(&header, &superframe, &mut buf, 0, |b, len| segments.push(b[..len].to_vec())).unwrap();
        let out = run(&mut Coalescer::new(Config::default()), &segments);
        assert_eq!(out, vec![(header, superframe)]);
    }

    #[test]
    fn cwr_goes_alone_and_fin_ends() {
        // As the kernel's GRO does it (see kernel_tests): the CWR segment is not merged, the
        // rest is, FIN and PSH included.
        let spec = FrameSpec {
            flags: flags::ACK | flags::PSH | flags::FIN | flags::CWR,
            checksum: PartialOrFull::Partial,
            ..FrameSpec::v4(3500)
        };
        let mut header = gso_header(&spec, 1000);
        header.ecn = true;
        let mut segments = Vec::new();
        let mut buf = vec![0u8; 2000];
        segment_into(&header, &build(&spec), &mut buf, 0, |b, len| segments.push(b[..len].to_vec())).unwrap();
        let out = run(&mut Coalescer::new(Config::default()), &segments);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (VirtioNetHeader::NONE, segments[0].clone()));
        let rest = FrameSpec {
            identification: spec.identification + 1,
            flags: flags::ACK | flags::PSH | flags::FIN,
            ..spec.slice(1000, 2500)
        };
        assert_eq!(out[1], (gso_header(&rest, 1000), build(&rest)));
    }

    #[test]
    fn same_flow_keeps_its_order() {
        let spec = FrameSpec::v4(2000);
        let frames = vec![build(&spec.slice(0, 1000)), build(&spec.slice(1000, 0))];
        let mut coalescer = Coalescer::new(Config::default());
        let mut out = Vec::new();
        for frame in &frames {
            coalescer.push(&mut with_room(frame), &mut |b: &[u8]| out.push(b[HL..].to_vec()));
        }
        // The pure ACK pushed the held segment out before it, without waiting for a flush.
        assert_eq!(out, frames);
    }

    #[test]
    fn psh_or_a_short_segment_ends_the_super_frame() {
        // 3 full segments with PSH on the third, then 2 more.
        let spec = FrameSpec::v4(5000);
        let mut frames = segments_of(&spec.slice(0, 3000), 1000);
        frames[2] =
            build(&FrameSpec { flags: flags::ACK | flags::PSH, identification: 0x4244, ..spec.slice(2000, 1000) });
        frames.push(build(&FrameSpec { identification: 0x4245, ..spec.slice(3000, 1000) }));
        frames.push(build(&FrameSpec { identification: 0x4246, ..spec.slice(4000, 500) }));
        let mut coalescer = Coalescer::new(Config::default());
        let mut emitted = Vec::new();
        for frame in &frames {
            coalescer.push(&mut with_room(frame), &mut |b: &[u8]| emitted.push(b.to_vec()));
        }
        // Both super-frames went out without a flush: PSH, then a short last segment.
        assert_eq!(emitted.len(), 2);
        assert!(coalescer.is_empty());
        let first = &emitted[0][HL..];
        assert_eq!(first.len(), 66 + 3000);
        assert_eq!(first[47] & 0x3F, (flags::ACK | flags::PSH) as u8);
        let second = &emitted[1][HL..];
        assert_eq!(second.len(), 66 + 1500);
        assert_eq!(u16::from_be_bytes([second[18], second[19]]), 0x4245, "first segment's IP ID");
    }

    #[test]
    fn single_segments_pass_unchanged() {
        // The first is of a flow of its own, so that the others do not push it out.
        let spec = FrameSpec { source_port: 999, ..FrameSpec::v4(1000) };
        let frames = vec![
            build(&spec),
            build(&FrameSpec { flags: flags::ACK, ..FrameSpec::v6(0) }), // pure ACK
            build(&FrameSpec { flags: flags::ACK | flags::PSH, ..FrameSpec::v6(10) }),
            build(&FrameSpec { flags: flags::SYN, ..FrameSpec::v4(0) }),
            build(&FrameSpec { flags: flags::ACK | flags::FIN, ..FrameSpec::v4(10) }),
            build(&FrameSpec { flags: flags::ACK | flags::URG, ..FrameSpec::v4(10) }),
            build(&FrameSpec { flags: flags::PSH, ..FrameSpec::v4(10) }), // no ACK
            vec![0xff; 60],                                               // not IP
            vec![1, 2, 3],                                                // not even Ethernet
        ];
        let out = run(&mut Coalescer::new(Config::default()), &frames);
        assert_eq!(out.len(), frames.len());
        // The first is held for a follower until the flush; the rest go straight through.
        for (got, frame) in out.iter().zip(frames[1..].iter().chain(&frames[..1])) {
            assert_eq!(got.0, VirtioNetHeader::NONE);
            assert_eq!(&got.1, frame);
        }
    }

    /// Segment 0 held, then a segment that differs in one way: both must come out unchanged,
    /// in order.
    #[test]
    fn does_not_merge_what_differs() {
        let spec = FrameSpec::v4(2000);
        let head = build(&spec.slice(0, 1000));
        let next = spec.slice(1000, 1000);
        let next = FrameSpec { identification: spec.identification + 1, ..next };
        let variants: Vec<(&str, Vec<u8>)> = vec![
            ("sequence gap", build(&FrameSpec { sequence: next.sequence + 1, ..next.clone() })),
            ("acknowledgment", build(&FrameSpec { acknowledgment: 1, ..next.clone() })),
            ("window", build(&FrameSpec { window: 1, ..next.clone() })),
            ("options", build(&FrameSpec { tcp_options: vec![1, 1, 1, 1], ..next.clone() })),
            ("timestamp", {
                let mut options = testutil::TIMESTAMPS;
                options[7] += 1;
                build(&FrameSpec { tcp_options: options.to_vec(), ..next.clone() })
            }),
            ("ECE", build(&FrameSpec { flags: flags::ACK | flags::ECE, ..next.clone() })),
            ("CWR later", build(&FrameSpec { flags: flags::ACK | flags::CWR, ..next.clone() })),
            ("longer than the MSS", build(&spec.slice(1000, 1001))),
            ("TTL", build(&FrameSpec { hop_limit: 63, ..next.clone() })),
            ("identification", build(&FrameSpec { identification: spec.identification + 2, ..next.clone() })),
            ("DF", build(&FrameSpec { dont_fragment: false, ..next.clone() })),
            ("RST", build(&FrameSpec { flags: flags::ACK | flags::RST, ..next.clone() })),
            ("pure ACK", build(&spec.slice(1000, 0))),
            ("VLAN", build(&FrameSpec { vlan_tags: 1, ..next.clone() })),
            ("bad checksum", {
                let mut frame = build(&next);
                let at = frame.len() - 1;
                frame[at] ^= 1;
                frame
            }),
        ];
        for (what, frame) in variants {
            let mut coalescer = Coalescer::new(Config::default());
            let out = run(&mut coalescer, &[head.clone(), frame.clone()]);
            assert_eq!(out.len(), 2, "{what}");
            assert_eq!(out[0], (VirtioNetHeader::NONE, head.clone()), "{what}");
            assert_eq!(out[1], (VirtioNetHeader::NONE, frame), "{what}");
        }
    }

    #[test]
    fn other_flows_do_not_interrupt() {
        let a = FrameSpec::v4(3000);
        let b = FrameSpec { source_port: 1111, sequence: 7, ..FrameSpec::v6(3000) };
        let (sa, sb) = (segments_of(&a, 1000), segments_of(&b, 1000));
        let arp = vec![0xff; 42];
        let frames =
            vec![sa[0].clone(), sb[0].clone(), arp.clone(), sa[1].clone(), sb[1].clone(), sa[2].clone(), sb[2].clone()];
        let out = run(&mut Coalescer::new(Config::default()), &frames);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].1, arp);
        let super_a = build(&FrameSpec { checksum: PartialOrFull::Partial, ..a.clone() });
        let super_b = build(&FrameSpec { checksum: PartialOrFull::Partial, ..b.clone() });
        assert_eq!(out[1], (gso_header(&a, 1000), super_a));
        assert_eq!(out[2], (gso_header(&b, 1000), super_b));
    }

    #[test]
    fn a_full_house_gives_up_the_oldest() {
        let mut coalescer = Coalescer::new(Config { slots: 2, verify_checksums: true });
        let flows: Vec<FrameSpec> = (0..3).map(|i| FrameSpec { source_port: 100 + i, ..FrameSpec::v4(2000) }).collect();
        let mut out = Vec::new();
        for flow in &flows {
            coalescer.push(&mut with_room(&build(&flow.slice(0, 1000))), &mut |b: &[u8]| out.push(b.to_vec()));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][HL..], build(&flows[0].slice(0, 1000))[..]);
    }

    #[test]
    fn fixed_identification_with_df_merges() {
        let spec = FrameSpec::v4(3000);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| build(&spec.slice(i * 1000, 1000))).collect();
        let out = run(&mut Coalescer::new(Config::default()), &frames);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.gso, Gso::TcpV4);
        // Without DF the identifications must go up.
        let spec = FrameSpec { dont_fragment: false, ..spec };
        let frames: Vec<Vec<u8>> = (0..3).map(|i| build(&spec.slice(i * 1000, 1000))).collect();
        assert_eq!(run(&mut Coalescer::new(Config::default()), &frames).len(), 3);
    }

    #[test]
    fn without_verification_bad_checksums_merge() {
        let spec = FrameSpec::v4(2000);
        let mut frames = segments_of(&spec, 1000);
        frames[1][100] ^= 0xff;
        let config = Config { slots: 1, verify_checksums: false };
        assert_eq!(run(&mut Coalescer::new(config), &frames).len(), 1);
        let mut coalescer = Coalescer::new(Config::default());
        assert_eq!(run(&mut coalescer, &frames).len(), 2);
        assert_eq!(coalescer.stats().bad_checksums, 1);
        // A bad first segment is caught too.
        let mut frames = segments_of(&spec, 1000);
        frames[0][100] ^= 0xff;
        assert_eq!(run(&mut Coalescer::new(Config::default()), &frames).len(), 2);
    }

    #[test]
    fn stops_at_64k() {
        // 100 segments of 1000 bytes: the first super-frame takes 65 (IP length 65 * 1000 + 52).
        let spec = FrameSpec { identification: 0, ..FrameSpec::v4(100_000) };
        let frames = segments_of(&spec, 1000);
        let out = run(&mut Coalescer::new(Config::default()), &frames);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.len(), 14 + 52 + 65_000);
        assert_eq!(out[1].1.len(), 14 + 52 + 35_000);
        assert_eq!(u16::from_be_bytes([out[1].1[18], out[1].1[19]]), 65);
    }

    #[test]
    fn padding_is_dropped() {
        let spec = FrameSpec { tcp_options: Vec::new(), ..FrameSpec::v4(2) };
        let frames: Vec<Vec<u8>> = segments_of(&FrameSpec { payload_len: 4, ..spec }, 2)
            .into_iter()
            .map(|mut f| {
                f.resize(60, 0);
                f
            })
            .collect();
        let out = run(&mut Coalescer::new(Config::default()), &frames);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), 14 + 40 + 4);
    }

    /// Encapsulation in front of the frame in the tests' plaintexts (transport-mode UDP, VXLAN).
    const ENCAP: usize = 16;
    /// An ESP trailer's bytes after the frame in the tests' plaintexts.
    const TRAILER: [u8; 4] = [1, 2, 2, 17];

    /// Pushes the first frame; then offers each next one a landing, writes it there as a
    /// decrypted plaintext would be and joins it, or pushes it if there is no landing or it does
    /// not join. Returns the output and how many joined in their landing.
    fn run_landing(coalescer: &mut Coalescer, frames: &[Vec<u8>]) -> (Vec<(VirtioNetHeader, Vec<u8>)>, usize) {
        let mut out = Vec::new();
        let mut emit = |bytes: &[u8]| {
            let header = VirtioNetHeader::parse(&virtio_net::Packet::new_checked(bytes).unwrap()).unwrap();
            out.push((header, bytes[HL..].to_vec()));
        };
        let mut joined = 0;
        for frame in frames {
            let mut plaintext = vec![0xCC; ENCAP];
            plaintext.extend_from_slice(frame);
            plaintext.extend_from_slice(&TRAILER);
            if let Some(mut landing) = Landing::at_tail(&mut *coalescer, ENCAP, plaintext.len()) {
                landing.plaintext().copy_from_slice(&plaintext);
                if landing.join(ENCAP..ENCAP + frame.len(), &mut emit) {
                    joined += 1;
                    continue;
                }
            }
            coalescer.push(&mut with_room(frame), &mut emit);
        }
        coalescer.flush(&mut emit);
        assert!(coalescer.is_empty());
        (out, joined)
    }

    #[test]
    fn segments_joined_in_their_landing_come_out_as_pushed_ones() {
        let a = FrameSpec::v4(7001);
        let b = FrameSpec { source_port: 1111, ..FrameSpec::v6(3500) };
        let mut frames = segments_of(&a, 1000);
        frames.insert(3, build(&FrameSpec { flags: flags::ACK, ..FrameSpec::v4(0) })); // pure ACK
        frames.extend(segments_of(&b, 700));
        frames.insert(9, vec![0xff; 42]);
        frames.swap(12, 13); // out of order
        frames.push(segments_of(&a, 1000)[2].clone()); // an old segment again
        // Bad TCP checksums, on a first segment and on a later one.
        let mut c = segments_of(&FrameSpec { source_port: 4444, ..FrameSpec::v4(4000) }, 1000);
        c[0][100] ^= 0xff;
        c[2][100] ^= 0xff;
        frames.extend(c);
        for verify_checksums in [false, true] {
            let config = Config { verify_checksums, ..Config::default() };
            let mut pushing = Coalescer::new(config);
            let pushed = run(&mut pushing, &frames);
            let mut coalescer = Coalescer::new(config);
            let (landed, joined) = run_landing(&mut coalescer, &frames);
            assert_eq!(landed, pushed);
            assert_eq!(coalescer.stats(), pushing.stats());
            // a0 a1 a2 | ACK | a3 a4 a5 a6 a7 (short: the end) | ARP | b0 b1 | b3 | b2 | b4 | a2 |
            // c0 c1 c2 c3: a run's second and later segments; unchecked, c's bad checksums
            // do not end its run; checked, every c segment starts one (bad c0 and c2 are each
            // found as the head of the next).
            let expected = if verify_checksums { 2 + 4 + 1 } else { 2 + 4 + 1 + 3 };
            assert_eq!(joined, expected, "joined in place");
            assert_eq!(coalescer.stats().frames_in, frames.len() as u64);
        }
    }

    #[test]
    fn a_landing_without_a_join_leaves_the_slot_as_it_was_and_wipes_the_plaintext() {
        let frames = segments_of(&FrameSpec::v4(3000), 1000);
        let mut coalescer = Coalescer::new(Config::default());
        coalescer.push(&mut with_room(&frames[0]), &mut |_| panic!("held"));
        let before = coalescer.slots[0].buf.to_vec();
        let len = ENCAP + frames[1].len() + TRAILER.len();
        {
            let mut landing = Landing::at_tail(&mut coalescer, ENCAP, len).unwrap();
            // As a forged packet's unauthenticated plaintext could be.
            landing.plaintext().fill(0xA5);
        }
        assert!(coalescer.slots[0].buf[..] == before[..], "restored, and the rest wiped");
        {
            // Authentic, but it does not continue the flow (another flow, a gap): not joined.
            let mut landing = Landing::at_tail(&mut coalescer, ENCAP, len).unwrap();
            landing.plaintext()[ENCAP..ENCAP + frames[2].len()].copy_from_slice(&frames[2]);
            assert!(!landing.join(ENCAP..ENCAP + frames[2].len(), &mut |_| panic!("nothing to write")));
            assert!(!landing.join(ENCAP + 1..ENCAP + frames[2].len(), &mut |_| panic!("nothing to write")));
        }
        assert!(coalescer.slots[0].buf[..] == before[..]);
        assert_eq!(coalescer.stats().frames_in, 1);
        let mut out = Vec::new();
        for frame in &frames[1..] {
            coalescer.push(&mut with_room(frame), &mut |b: &[u8]| out.push(b[HL..].to_vec()));
        }
        coalescer.flush(&mut |b: &[u8]| out.push(b[HL..].to_vec()));
        assert_eq!(out, vec![build(&FrameSpec { checksum: PartialOrFull::Partial, ..FrameSpec::v4(3000) })]);
    }

    #[test]
    fn no_landing_where_it_would_cover_headers_or_overflow_the_slot() {
        let mut coalescer = Coalescer::new(Config::default());
        assert!(Landing::at_tail(&mut coalescer, ENCAP, 100).is_none(), "nothing held");
        // 40 bytes of payload held: a 16-byte encapsulation and 66 bytes of headers would
        // cover the held headers.
        let spec = FrameSpec::v4(80);
        coalescer.push(&mut with_room(&build(&spec.slice(0, 40))), &mut |_| panic!("held"));
        assert!(Landing::at_tail(&mut coalescer, ENCAP, 200).is_none());
        let mut coalescer = Coalescer::new(Config::default());
        coalescer.push(&mut with_room(&build(&spec.slice(0, 1000))), &mut |_| panic!("held"));
        assert!(Landing::at_tail(&mut coalescer, ENCAP, 1100).is_some());
        assert!(Landing::at_tail(&mut coalescer, ENCAP, SLOT_LEN).is_none(), "past the slot's end");
        assert!(Landing::at_tail(&mut coalescer, ENCAP, ENCAP).is_none(), "shorter than its own prefix");
        assert!(Landing::at_tail(&mut coalescer, MAX_PREFIX, 2000).is_none(), "too long a prefix");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn segment_then_coalesce_round_trips(
            payload in 1usize..65_483,
            mss in 1usize..9000,
            v6 in any::<bool>(),
            psh in any::<bool>(),
            fin in any::<bool>(),
            cwr in any::<bool>(),
        ) {
            // Keep the number of segments reasonable.
            let payload = payload.min(mss * 300);
            let mut fl = flags::ACK;
            if psh { fl |= flags::PSH; }
            if fin { fl |= flags::FIN; }
            if cwr { fl |= flags::CWR; }
            let base = if v6 { FrameSpec::v6(payload) } else { FrameSpec::v4(payload) };
            let spec = FrameSpec { flags: fl, checksum: PartialOrFull::Partial, ..base };
            let superframe = build(&spec);
            let header = VirtioNetHeader { ecn: cwr, ..gso_header(&spec, mss) };
            let mut segments = Vec::new();
            let mut buf = vec![0u8; 10_000];
            segment_into(&header, &superframe, &mut buf, 0, |b, len| segments.push(b[..len].to_vec())).unwrap();
            let out = run(&mut Coalescer::new(Config::default()), &segments);
            // What should come out: single segments unchanged, runs of two or more merged;
            // a CWR segment (the first) always alone.
            let alone = usize::from(cwr);
            let mut expected: Vec<(VirtioNetHeader, Vec<u8>)> =
                segments[..alone.min(segments.len())].iter().map(|s| (VirtioNetHeader::NONE, s.clone())).collect();
            match segments.len() - expected.len() {
                0 => {}
                1 => expected.push((VirtioNetHeader::NONE, segments[segments.len() - 1].clone())),
                _ => {
                    let rest = FrameSpec {
                        identification: spec.identification + alone as u16,
                        flags: fl & !flags::CWR,
                        ..spec.slice(alone * mss, payload - alone * mss)
                    };
                    expected.push((gso_header(&rest, mss), build(&rest)));
                }
            }
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn never_panics_on_garbage(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..8)) {
            let mut coalescer = Coalescer::new(Config { slots: 2, verify_checksums: true });
            let mut n = 0;
            for frame in &frames {
                coalescer.push(&mut with_room(frame), &mut |_: &[u8]| n += 1);
            }
            coalescer.flush(&mut |_: &[u8]| n += 1);
            prop_assert_eq!(n, frames.len());
        }

        /// Mutated copies of valid segments, so that more of them get past the parsers: no
        /// panic, and between one and all of them come out.
        #[test]
        fn never_panics_near_valid(
            mutations in proptest::collection::vec((0usize..8, 0usize..80, any::<u8>()), 0..4),
            verify in any::<bool>(),
        ) {
            let spec = FrameSpec::v4(8 * 100);
            let mut frames = segments_of(&spec, 100);
            for (which, at, byte) in mutations {
                frames[which][at] = byte;
            }
            let mut coalescer = Coalescer::new(Config { slots: 2, verify_checksums: verify });
            let mut out = 0;
            let mut emit = |b: &[u8]| {
                assert!(b.len() >= HL);
                out += 1;
            };
            for frame in &frames {
                coalescer.push(&mut with_room(frame), &mut emit);
            }
            coalescer.flush(&mut emit);
            prop_assert!(out >= 1 && out <= frames.len());
        }
    }
}
