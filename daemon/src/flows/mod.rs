//! Flow export (`[flows]`): the inner IP flows of the overlays, metered in the datapath and sent
//! to an IPFIX collector.
//!
//! Workers add up each batch's frames per flow in a small local list and merge it into the
//! shared cache under one lock per batch. The cache holds at most `max_flows` flows; packets of
//! a flow that finds it full are counted as overflow instead. The exporter (`export`) takes out
//! flows idle for `idle_timeout` and reports long ones every `active_timeout`.

pub mod export;
pub mod ipfix;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_config::control::Direction;

use self::ipfix::{Addresses, EndReason};
use crate::diag::observe::SeenFrame;
use crate::topology::{OverlayId, PeerId};
use crate::wire::{ethernet, ipv4, ipv6};

/// Flows a batch adds up locally before it merges them (a batch is mostly a few flows).
const BATCH_FLOWS: usize = 16;
/// IP protocols whose first four payload bytes are the ports.
const PORTED_PROTOCOLS: [u8; 3] = [crate::wire::tcp::PROTOCOL_TCP, ipv4::PROTOCOL_UDP, 132];
/// Offset of the TCP flags in the TCP header (with the NS bit in the byte before).
const TCP_FLAGS: usize = 13;

/// What makes packets one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub direction: Direction,
    pub overlay: OverlayId,
    pub peer: PeerId,
    pub vni: u32,
    pub addresses: Addresses,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
}

/// What a flow carried since it was last exported; times are the mesh clock's milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowCounters {
    pub packets: u64,
    /// IP packet bytes (the frame without its Ethernet header).
    pub octets: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub tcp_flags: u16,
}

impl FlowCounters {
    fn add(&mut self, other: &FlowCounters) {
        self.packets += other.packets;
        self.octets += other.octets;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        self.tcp_flags |= other.tcp_flags;
    }
}

/// The flow of an IPv4 or IPv6 frame with its counters, or `None` for other frames (ARP...).
pub fn classify(seen: &SeenFrame<'_>, now_ms: u64) -> Option<(FlowKey, FlowCounters)> {
    let ethertype = ethernet::Frame::new_checked(seen.frame).ok()?.ethertype();
    let ip = &seen.frame[ethernet::HEADER_LEN..];
    let (addresses, protocol, transport, octets) = match ethertype {
        ethernet::ETHERTYPE_IPV4 => {
            let packet = ipv4::Packet::new_checked(ip).ok()?;
            let addresses =
                Addresses::V4 { source: packet.source_address(), destination: packet.destination_address() };
            // Later fragments carry no ports.
            let total = usize::from(packet.total_length());
            let transport = if packet.fragment_offset() == 0 { packet.header_length()..total } else { 0..0 };
            (addresses, packet.protocol(), transport, total)
        }
        ethernet::ETHERTYPE_IPV6 => {
            let packet = ipv6::Packet::new_checked(ip).ok()?;
            let addresses =
                Addresses::V6 { source: packet.source_address(), destination: packet.destination_address() };
            let total = ipv6::HEADER_LEN + usize::from(packet.payload_length());
            (addresses, packet.next_header(), ipv6::HEADER_LEN..total, total)
        }
        _ => return None,
    };
    // new_checked verified the lengths against the buffer.
    let transport = &ip[transport];
    let ports = PORTED_PROTOCOLS.contains(&protocol).then(|| transport.get(..4)).flatten();
    let (source_port, destination_port) =
        ports.map_or((0, 0), |p| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])));
    let tcp_flags = match (protocol, transport.get(TCP_FLAGS - 1..=TCP_FLAGS)) {
        (crate::wire::tcp::PROTOCOL_TCP, Some(flags)) => u16::from_be_bytes([flags[0] & 0x01, flags[1]]),
        _ => 0,
    };
    let key = FlowKey {
        direction: seen.direction,
        overlay: seen.overlay,
        peer: seen.peer,
        vni: seen.vni,
        addresses,
        protocol,
        source_port,
        destination_port,
    };
    let counters = FlowCounters { packets: 1, octets: octets as u64, first_ms: now_ms, last_ms: now_ms, tcp_flags };
    Some((key, counters))
}

/// The shared flow cache.
pub struct FlowMeter {
    flows: Mutex<HashMap<FlowKey, FlowCounters>>,
    max_flows: usize,
    /// Packets not metered because the cache was full.
    overflow: AtomicU64,
}

/// A flow taken out of the cache for export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub key: FlowKey,
    pub counters: FlowCounters,
    pub reason: EndReason,
}

impl FlowMeter {
    pub fn new(max_flows: usize) -> Self {
        FlowMeter { flows: Mutex::new(HashMap::new()), max_flows, overflow: AtomicU64::new(0) }
    }

    /// Adds a batch's flows.
    fn merge(&self, batch: &[(FlowKey, FlowCounters)]) {
        let mut flows = self.flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, counters) in batch {
            if let Some(flow) = flows.get_mut(key) {
                flow.add(counters);
            } else if flows.len() < self.max_flows {
                flows.insert(*key, *counters);
            } else {
                self.overflow.fetch_add(counters.packets, Ordering::Relaxed);
            }
        }
    }

    /// Takes out flows idle for `idle_ms` (all of them with `everything`) and the counts of
    /// flows older than `active_ms`, which stay with fresh counters.
    pub fn expire(&self, now_ms: u64, active_ms: u64, idle_ms: u64, everything: bool) -> Vec<Expired> {
        let mut flows = self.flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut expired = Vec::new();
        flows.retain(|key, counters| {
            let reason = if everything {
                EndReason::EndOfFlow
            } else if now_ms.saturating_sub(counters.last_ms) >= idle_ms {
                EndReason::IdleTimeout
            } else if now_ms.saturating_sub(counters.first_ms) >= active_ms {
                EndReason::ActiveTimeout
            } else {
                return true;
            };
            expired.push(Expired { key: *key, counters: *counters, reason });
            if reason == EndReason::ActiveTimeout {
                *counters = FlowCounters { packets: 0, octets: 0, first_ms: now_ms, last_ms: now_ms, tcp_flags: 0 };
                return true;
            }
            false
        });
        // A flow reported by its active timeout and idle since has nothing more to say.
        expired.retain(|flow| flow.counters.packets > 0);
        expired
    }

    pub fn tracked(&self) -> usize {
        self.flows.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

/// One batch's flows, merged into the meter when the batch ends (on drop).
pub struct BatchFlows {
    meter: Arc<FlowMeter>,
    flows: RefCell<Vec<(FlowKey, FlowCounters)>>,
}

impl BatchFlows {
    pub fn new(meter: Arc<FlowMeter>) -> Self {
        BatchFlows { meter, flows: RefCell::new(Vec::new()) }
    }

    pub fn add(&self, seen: &SeenFrame<'_>, now_ms: u64) {
        let Some((key, counters)) = classify(seen, now_ms) else { return };
        let mut flows = self.flows.borrow_mut();
        if let Some((_, flow)) = flows.iter_mut().find(|(k, _)| *k == key) {
            flow.add(&counters);
            return;
        }
        if flows.len() == BATCH_FLOWS {
            self.meter.merge(&flows);
            flows.clear();
        }
        flows.push((key, counters));
    }
}

impl Drop for BatchFlows {
    fn drop(&mut self) {
        let flows = self.flows.get_mut();
        if !flows.is_empty() {
            self.meter.merge(flows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4/UDP packet of `payload` bytes from port 1000 to 2000.
    fn udp_frame(payload: usize) -> Vec<u8> {
        let total = 20 + 8 + payload;
        let mut frame = vec![0u8; 14 + total];
        frame[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut frame[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[9] = ipv4::PROTOCOL_UDP;
        ip[12..16].copy_from_slice(&[10, 244, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 244, 0, 2]);
        ip[20..22].copy_from_slice(&1000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&2000u16.to_be_bytes());
        frame
    }

    fn seen(frame: &[u8]) -> SeenFrame<'_> {
        SeenFrame { direction: Direction::Out, overlay: OverlayId(0), peer: PeerId(1), spi: 1, vni: 42, frame }
    }

    #[test]
    fn a_udp_frame_is_a_five_tuple_with_ip_bytes() {
        let frame = udp_frame(100);
        let (key, counters) = classify(&seen(&frame), 5).unwrap();
        assert_eq!((key.protocol, key.source_port, key.destination_port), (17, 1000, 2000));
        assert_eq!((counters.packets, counters.octets), (1, 128));
        assert!(classify(&seen(&[0u8; 60]), 5).is_none(), "not IP");
    }

    #[test]
    fn batches_merge_and_timeouts_expire() {
        let meter = Arc::new(FlowMeter::new(1));
        let frame = udp_frame(100);
        {
            let batch = BatchFlows::new(meter.clone());
            batch.add(&seen(&frame), 10);
            batch.add(&seen(&frame), 20);
        }
        assert_eq!(meter.tracked(), 1);
        // Active timeout: reported, kept with fresh counters.
        let active = meter.expire(1_010, 1_000, 5_000, false);
        assert_eq!((active.len(), active[0].reason, active[0].counters.packets), (1, EndReason::ActiveTimeout, 2));
        assert_eq!(meter.tracked(), 1);
        // Idle since: nothing more to report, and forgotten.
        assert_eq!(meter.expire(7_000, 1_000, 5_000, false), vec![]);
        assert_eq!(meter.tracked(), 0);
    }

    #[test]
    fn a_full_cache_counts_overflow() {
        let meter = Arc::new(FlowMeter::new(1));
        let (first, mut second) = (udp_frame(10), udp_frame(10));
        second[14 + 19] = 3;
        {
            let batch = BatchFlows::new(meter.clone());
            batch.add(&seen(&first), 1);
            batch.add(&seen(&second), 1);
            batch.add(&seen(&second), 1);
        }
        assert_eq!((meter.tracked(), meter.overflow()), (1, 2));
        let all = meter.expire(2, 1_000, 1_000, true);
        assert_eq!((all.len(), all[0].reason), (1, EndReason::EndOfFlow));
    }
}
