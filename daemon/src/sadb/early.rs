//! ESP that arrives before its inbound SA: held, not dropped.
//!
//! A node that offers an inbound SPI (its IKE_AUTH request, or a Child SA rekey it starts)
//! installs that SA only when the peer's answer arrives. The peer installs its half and may send
//! on it the moment it answers, and its first packets (an announcement, a VM's frames, its
//! kernel's multicast) can overtake the answer. They are kept here, a few per SPI for a few
//! seconds, and handed to a worker once the SA is installed; nothing is opened before, so ESP
//! from a peer whose answer never authenticates is never delivered. The SPI travels only inside
//! the encrypted IKE exchange, so no one else can fill its place. A packet that comes too late,
//! when its place is full, or for an SPI no one offered is an `unknown_spi` drop, as before.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use mesh_config::control::DropReason;

use crate::drops::{DropContext, Drops};
use crate::topology::PeerId;

/// How long after its offer an SPI's early packets are kept: an IKE_AUTH answer lost once is
/// retransmitted after 0.5 s and again 1 s later, so 5 s covers a few losses.
pub const EXPECT_MS: u64 = 5_000;
/// Packets kept per offered SPI; the first few are what matters (a TCP sender backs off).
pub const PACKETS_PER_SPI: usize = 8;
/// How long an offer stays once its SA is installed, for a packet whose worker looked the SPI up
/// a moment before the install.
pub const INSTALLED_GRACE_MS: u64 = 1_000;
/// Offers outstanding at once (a node runs at most 16 handshakes at a time, each offer lasting
/// a round trip and the grace); more are not held for.
pub const MAX_OFFERS: usize = 256;
/// Larger packets are not kept (a jumbo frame's ESP fits).
pub const MAX_PACKET_LEN: usize = 9_216;
/// Bytes kept in all, whatever the offers.
pub const MAX_BYTES: usize = 1 << 20;

/// One packet kept, as the datapath received it (SPI to ICV), where it came from and the peer
/// its SPI was offered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyPacket {
    pub esp: Vec<u8>,
    pub source: SocketAddr,
    pub peer: PeerId,
}

/// What the datapath does with ESP for an SPI it has no SA for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Kept until the SA is installed (or handed on at once: it just was).
    Kept,
    /// Nothing was offered with this SPI, its time is up, or its place is full: a drop.
    Refused,
}

#[derive(Debug)]
struct Offer {
    peer: PeerId,
    until_ms: u64,
    /// Installed: packets that still come (a worker missed the SA a moment before) go straight
    /// to `released`.
    installed: bool,
    packets: Vec<EarlyPacket>,
}

#[derive(Debug, Default)]
struct Offers {
    by_spi: HashMap<u32, Offer>,
    /// Packets whose SA is installed, for a worker to take.
    released: Vec<EarlyPacket>,
    /// The ESP bytes of every packet kept, offered or released.
    bytes: usize,
}

/// The offered SPIs and their early packets (`MeshState::early_esp`).
#[derive(Debug, Default)]
pub struct EarlyEsp {
    offers: Mutex<Offers>,
    /// How many offers `offers` holds (as of its last change): a flood of ESP for random SPIs
    /// takes no lock while nothing is offered, which is nearly always.
    offered: AtomicUsize,
    /// Written to when packets are released, so that a sleeping worker takes them at once
    /// (`Datapath` sets it; `None` until the first workers start).
    waker: Mutex<Option<UnixStream>>,
}

impl EarlyEsp {
    /// The peer may use `spi` before our side installs it (we just offered it).
    pub fn expect(&self, spi: u32, peer: PeerId, now_ms: u64, drops: &Drops) {
        let mut offers = self.lock(now_ms, drops);
        if offers.by_spi.len() >= MAX_OFFERS && !offers.by_spi.contains_key(&spi) {
            tracing::debug!(spi = format_args!("{spi:#010x}"), "too many SPIs offered at once; early ESP for this one is not kept");
            return;
        }
        let offer = Offer { peer, until_ms: now_ms + EXPECT_MS, installed: false, packets: Vec::new() };
        // The same SPI offered again (a new exchange): what the old offer kept goes as it would
        // have at its end.
        if let Some(old) = offers.by_spi.insert(spi, offer) {
            offers.bytes -= discard(spi, &old, drops);
        }
        self.offered.store(offers.by_spi.len(), Ordering::Relaxed);
    }

    /// ESP for `spi`, which has no inbound SA: kept if `spi` was offered and has room.
    pub fn hold(&self, spi: u32, esp: &[u8], source: SocketAddr, now_ms: u64, drops: &Drops) -> Hold {
        if esp.len() > MAX_PACKET_LEN || !self.is_offering() {
            return Hold::Refused;
        }
        let mut offers = self.lock(now_ms, drops);
        let Offers { by_spi, released, bytes } = &mut *offers;
        let Some(offer) = by_spi.get_mut(&spi) else { return Hold::Refused };
        if *bytes + esp.len() > MAX_BYTES || (!offer.installed && offer.packets.len() >= PACKETS_PER_SPI) {
            return Hold::Refused;
        }
        *bytes += esp.len();
        let packet = EarlyPacket { esp: esp.to_vec(), source, peer: offer.peer };
        if !offer.installed {
            offer.packets.push(packet);
            return Hold::Kept;
        }
        released.push(packet);
        drop(offers);
        self.wake();
        Hold::Kept
    }

    /// The inbound SA `spi` is installed: its early packets go to a worker.
    pub fn installed(&self, spi: u32, now_ms: u64, drops: &Drops) {
        let mut offers = self.lock(now_ms, drops);
        let Offers { by_spi, released, .. } = &mut *offers;
        let Some(offer) = by_spi.get_mut(&spi) else { return };
        offer.installed = true;
        offer.until_ms = offer.until_ms.min(now_ms + INSTALLED_GRACE_MS);
        if offer.packets.is_empty() {
            return;
        }
        tracing::debug!(
            spi = format_args!("{spi:#010x}"),
            packets = offer.packets.len(),
            "ESP that came before its SA was installed is handed on"
        );
        released.append(&mut offer.packets);
        drop(offers);
        self.wake();
    }

    /// Whether any SPI is offered now (or was, and no call has seen its time up since).
    pub fn is_offering(&self) -> bool {
        self.offered.load(Ordering::Relaxed) > 0
    }

    /// Ends the offers whose time is up and counts what they kept as `unknown_spi` drops. The
    /// first worker calls it about once a second while anything is offered, so that packets
    /// whose SA never came show in the drop counters a second after their 5 s, not only at the
    /// next offer or the next ESP for an SPI without an SA.
    pub fn expire(&self, now_ms: u64, drops: &Drops) {
        if self.is_offering() {
            drop(self.lock(now_ms, drops));
        }
    }

    /// The packets released since the last call, oldest first.
    pub fn take_released(&self) -> Vec<EarlyPacket> {
        let mut offers = self.offers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let released = std::mem::take(&mut offers.released);
        offers.bytes -= released.iter().map(|packet| packet.esp.len()).sum::<usize>();
        released
    }

    /// Where wake-ups go from now on (the running `Datapath`'s); packets released while no
    /// worker ran (a reload's restart) wake the new one at once.
    pub fn wake_through(&self, waker: UnixStream) {
        *self.waker_guard() = Some(waker);
        if !self.offers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).released.is_empty() {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(mut waker) = self.waker_guard().as_ref() {
            // A full socket already holds a wake-up.
            if let Err(error) = waker.write(&[1]) {
                if error.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(%error, "could not wake a worker for early ESP");
                }
            }
        }
    }

    fn waker_guard(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The offers, without those whose time is up; their packets are counted as the drops they
    /// would have been.
    fn lock(&self, now_ms: u64, drops: &Drops) -> MutexGuard<'_, Offers> {
        let mut offers = self.offers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Offers { by_spi, bytes, .. } = &mut *offers;
        by_spi.retain(|spi, offer| {
            if offer.until_ms > now_ms {
                return true;
            }
            *bytes -= discard(*spi, offer, drops);
            false
        });
        self.offered.store(offers.by_spi.len(), Ordering::Relaxed);
        offers
    }
}

/// Counts the packets `offer` kept as the `unknown_spi` drops they would have been; returns
/// their bytes.
fn discard(spi: u32, offer: &Offer, drops: &Drops) -> usize {
    for packet in &offer.packets {
        let context =
            DropContext { peer: Some(offer.peer), spi: Some(spi), outer_source: Some(packet.source), ..DropContext::default() };
        drops.record(DropReason::UnknownSpi, context);
    }
    offer.packets.iter().map(|packet| packet.esp.len()).sum()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const PEER: PeerId = PeerId(1);
    const SPI: u32 = 0x1234_5678;

    fn source() -> SocketAddr {
        "198.18.0.2:4500".parse().unwrap()
    }

    fn unknown_spi(drops: &Drops) -> u64 {
        drops.report(|id| id.0.to_string(), None).by_reason.get(&DropReason::UnknownSpi).copied().unwrap_or(0)
    }

    #[test]
    fn packets_for_an_offered_spi_wait_for_its_install_and_are_handed_on_in_order() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        assert_eq!(early.hold(SPI, &[1], source(), 10, &drops), Hold::Refused, "nothing offered yet");
        early.expect(SPI, PEER, 10, &drops);
        assert_eq!(early.hold(SPI, &[2], source(), 20, &drops), Hold::Kept);
        assert_eq!(early.hold(SPI, &[3], source(), 30, &drops), Hold::Kept);
        assert_eq!(early.hold(SPI + 1, &[4], source(), 30, &drops), Hold::Refused, "another SPI");
        assert_eq!(early.take_released(), [], "nothing before the install");
        early.installed(SPI, 40, &drops);
        let released: Vec<Vec<u8>> = early.take_released().into_iter().map(|p| p.esp).collect();
        assert_eq!(released, [vec![2], vec![3]]);
        assert_eq!(early.take_released(), [], "handed on once");
        assert_eq!(unknown_spi(&drops), 0);
    }

    #[test]
    fn a_packet_that_missed_the_sa_just_installed_is_handed_on_too() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        early.installed(SPI, 20, &drops);
        assert_eq!(early.hold(SPI, &[5], source(), 21, &drops), Hold::Kept);
        assert_eq!(early.take_released(), [EarlyPacket { esp: vec![5], source: source(), peer: PEER }]);
    }

    #[test]
    fn an_installed_offer_goes_after_its_grace_and_the_bytes_kept_are_bounded() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        early.installed(SPI, 20, &drops);
        assert_eq!(early.hold(SPI, &[1], source(), 20 + INSTALLED_GRACE_MS - 1, &drops), Hold::Kept);
        assert_eq!(early.hold(SPI, &[1], source(), 20 + INSTALLED_GRACE_MS, &drops), Hold::Refused, "grace over");
        assert_eq!(early.take_released().len(), 1);
        // Offers by the hundred, each with what fits: MAX_BYTES in all, no more.
        let packet = vec![0u8; MAX_PACKET_LEN];
        let mut kept = 0;
        for spi in 0..MAX_OFFERS as u32 {
            early.expect(spi, PEER, 30, &drops);
            kept += (0..PACKETS_PER_SPI).filter(|_| early.hold(spi, &packet, source(), 31, &drops) == Hold::Kept).count();
        }
        assert_eq!(kept, MAX_BYTES / MAX_PACKET_LEN);
        // What is handed on frees its bytes.
        early.installed(0, 32, &drops);
        assert_eq!(early.take_released().len(), PACKETS_PER_SPI);
        assert_eq!(early.hold(200, &packet, source(), 34, &drops), Hold::Kept);
        // So does an offer whose time is up (its packets counted as drops).
        early.expect(SPI + 1, PEER, 33 + EXPECT_MS, &drops);
        assert_eq!(early.hold(SPI + 1, &[1; 100], source(), 34 + EXPECT_MS, &drops), Hold::Kept);
        assert_eq!(early.offers.lock().unwrap().bytes, 100);
    }

    #[test]
    fn a_full_place_and_large_packets_are_refused() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        for n in 0..PACKETS_PER_SPI {
            assert_eq!(early.hold(SPI, &[n as u8], source(), 11, &drops), Hold::Kept);
        }
        assert_eq!(early.hold(SPI, &[0xff], source(), 12, &drops), Hold::Refused);
        early.expect(SPI + 1, PEER, 10, &drops);
        assert_eq!(early.hold(SPI + 1, &vec![0; MAX_PACKET_LEN + 1], source(), 12, &drops), Hold::Refused);
        assert_eq!(early.hold(SPI + 1, &vec![0; MAX_PACKET_LEN], source(), 12, &drops), Hold::Kept);
    }

    #[test]
    fn packets_whose_sa_never_comes_count_as_unknown_spi_when_their_time_is_up() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        early.hold(SPI, &[1], source(), 11, &drops);
        early.hold(SPI, &[2], source(), 12, &drops);
        assert_eq!(unknown_spi(&drops), 0);
        assert_eq!(early.hold(SPI, &[3], source(), 10 + EXPECT_MS, &drops), Hold::Refused, "time is up");
        assert_eq!(unknown_spi(&drops), 2, "the two kept ones, counted once");
        early.installed(SPI, 10 + EXPECT_MS + 1, &drops);
        assert_eq!(early.take_released(), [], "an install after the time releases nothing");
        assert_eq!(unknown_spi(&drops), 2);
    }

    #[test]
    fn an_offer_whose_time_is_up_is_counted_by_expire_without_waiting_for_another_packet() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        early.hold(SPI, &[1; 10], source(), 11, &drops);
        early.expire(10 + EXPECT_MS - 1, &drops);
        assert_eq!(unknown_spi(&drops), 0, "still within its time");
        assert!(early.is_offering());
        early.expire(10 + EXPECT_MS, &drops);
        assert_eq!(unknown_spi(&drops), 1, "counted at its end");
        assert!(!early.is_offering(), "nothing left to expire");
        assert_eq!(early.offers.lock().unwrap().bytes, 0, "its bytes freed");
        early.expire(20 + EXPECT_MS, &drops);
        assert_eq!(unknown_spi(&drops), 1, "once");
    }

    #[test]
    fn once_every_offer_is_over_nothing_is_held_and_no_lock_is_needed() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        assert_eq!(early.offered.load(Ordering::Relaxed), 0);
        early.expect(SPI, PEER, 10, &drops);
        assert_eq!(early.offered.load(Ordering::Relaxed), 1);
        assert_eq!(early.hold(SPI + 1, &[1], source(), 10 + EXPECT_MS, &drops), Hold::Refused);
        assert_eq!(early.offered.load(Ordering::Relaxed), 0, "the lapsed offer is gone");
        assert_eq!(early.hold(SPI, &[1], source(), 10 + EXPECT_MS, &drops), Hold::Refused);
    }

    #[test]
    fn an_spi_offered_again_starts_afresh_and_what_it_kept_is_counted() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        early.expect(SPI, PEER, 10, &drops);
        early.hold(SPI, &[1; 10], source(), 11, &drops);
        early.expect(SPI, PEER, 12, &drops);
        assert_eq!(unknown_spi(&drops), 1);
        assert_eq!(early.offers.lock().unwrap().bytes, 0);
        assert_eq!(early.hold(SPI, &[2; 10], source(), 13, &drops), Hold::Kept);
        early.installed(SPI, 14, &drops);
        assert_eq!(early.take_released(), [EarlyPacket { esp: vec![2; 10], source: source(), peer: PEER }]);
        assert_eq!(early.offers.lock().unwrap().bytes, 0);
    }

    #[test]
    fn offers_beyond_the_limit_are_not_held_for() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        for spi in 0..MAX_OFFERS as u32 {
            early.expect(spi, PEER, 10, &drops);
        }
        early.expect(SPI, PEER, 10, &drops);
        assert_eq!(early.hold(SPI, &[1], source(), 11, &drops), Hold::Refused);
        assert_eq!(early.hold(0, &[1], source(), 11, &drops), Hold::Kept);
        // Once the old offers are gone there is room again.
        early.expect(SPI, PEER, 10 + EXPECT_MS, &drops);
        assert_eq!(early.hold(SPI, &[1], source(), 11 + EXPECT_MS, &drops), Hold::Kept);
    }

    #[test]
    fn a_release_wakes_the_worker_and_taking_the_packets_quiets_it() {
        let (early, drops) = (EarlyEsp::default(), Drops::new(4));
        let (waker, woken) = UnixStream::pair().unwrap();
        waker.set_nonblocking(true).unwrap();
        woken.set_nonblocking(true).unwrap();
        // Reads one wake-up, if there is one.
        let woke = |mut socket: &UnixStream| {
            let mut byte = [0u8; 1];
            matches!(socket.read(&mut byte), Ok(1))
        };
        // Released while no worker ran (a reload restarts them): the next one is woken.
        early.expect(SPI, PEER, 10, &drops);
        early.hold(SPI, &[1], source(), 11, &drops);
        early.installed(SPI, 12, &drops);
        early.wake_through(waker);
        assert!(woke(&woken), "packets released while no worker ran wake the next one");
        assert_eq!(early.take_released().len(), 1);
        early.expect(SPI + 2, PEER, 10, &drops);
        early.hold(SPI + 2, &[1], source(), 11, &drops);
        assert!(!woke(&woken), "holding wakes no one");
        early.installed(SPI + 2, 12, &drops);
        assert!(woke(&woken), "the install wakes a worker");
        assert_eq!(early.take_released().len(), 1);
    }
}
