//! The Child SA lifecycle of one IKE SA: install (both halves, or the outbound half held back
//! until the peer stops using the SA it replaces), rekey as initiator or responder, crossed
//! rekeys (RFC 7296 §2.8.1), deletion, expiry, and inbound SAs kept briefly after their
//! replacement for packets in flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_config::Mode;

use super::context::Context;
use super::crypto::{ChildSaKeys as DerivedChildKeys, IkeSaKeys, Role, X25519KeyPair};
use super::handover::{self, ChildRecord};
use super::message::ids::{diffie_hellman, exchange, notify, protocol};
use super::message::{Header, KeyExchange, Nonce, Notify, Payload};
use super::parts::{flag, has_notify, notifies, our_group, Parts};
use super::proposal::{self, ChosenEsp};
use super::rng;
use super::sa::{child_not_found, IkeSa, Next};
use super::types::{ChildSaKeys, Event, Failure, LocalError, PeerIndex};
use super::window::{Purpose, Queued};
use super::NAT_T_PORT;

/// Inbound SAs are kept this long after their replacement, for packets in flight.
const INBOUND_GRACE: Duration = Duration::from_secs(3);
/// The responder of a Child SA rekey switches to the new outbound SA at the latest this long
/// after answering (normally when the old one's DELETE arrives).
const OUTBOUND_SWITCH_DELAY: Duration = Duration::from_secs(2);

/// One Child SA (a pair of ESP SAs).
struct Child {
    inbound_spi: u32,
    outbound_spi: u32,
    mode: Mode,
    rekey_at: Instant,
    expire_at: Instant,
    /// Outbound key held back until the peer stops using the SA this one replaces.
    pending_outbound: Option<(ChildSaKeys, Instant)>,
    /// A rekey of this Child SA is under way or done.
    rekeyed: bool,
    /// Its rekey is queued behind another request: not due again meanwhile.
    rekey_queued: bool,
    /// Our answer to the peer's rekey of it: a repeated REKEY_SA gets the same one.
    rekey_answer: Option<Vec<Payload>>,
}

/// The Child SAs of one IKE SA.
#[derive(Default)]
pub(super) struct Children {
    list: Vec<Child>,
    /// Nonces (Ni, Nr) of the peer's rekeys that crossed ours.
    collision_nonces: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Children {
    /// The Child SAs for the meshd that takes over (`crate::upgrade`); `None` while one is
    /// being rekeyed or its outbound half is held back.
    pub(super) fn export(&self, now: Instant) -> Option<Vec<ChildRecord>> {
        if !self.collision_nonces.is_empty() {
            return None;
        }
        self.list
            .iter()
            .map(|c| {
                (!c.rekeyed && c.pending_outbound.is_none()).then(|| ChildRecord {
                    inbound_spi: c.inbound_spi,
                    outbound_spi: c.outbound_spi,
                    mode: c.mode,
                    rekey_in: handover::until(c.rekey_at, now),
                    expire_in: handover::until(c.expire_at, now),
                })
            })
            .collect()
    }

    /// The Child SAs a running meshd handed over.
    pub(super) fn restore(records: &[ChildRecord], now: Instant) -> Self {
        let list = records
            .iter()
            .map(|record| Child {
                inbound_spi: record.inbound_spi,
                outbound_spi: record.outbound_spi,
                mode: record.mode,
                rekey_at: now + record.rekey_in,
                expire_at: now + record.expire_in,
                pending_outbound: None,
                rekeyed: false,
                rekey_queued: false,
                rekey_answer: None,
            })
            .collect();
        Children { list, collision_nonces: Vec::new() }
    }

    /// (inbound SPI, outbound SPI) of each.
    pub(super) fn spis(&self) -> Vec<(u32, u32)> {
        self.list.iter().map(|c| (c.inbound_spi, c.outbound_spi)).collect()
    }

    /// The Child SA that sends on `outbound_spi`, if no rekey of it is under way: its inbound
    /// SPI.
    pub(super) fn rekeyable_by_outbound(&self, outbound_spi: u32) -> Option<u32> {
        self.list.iter().find(|c| c.outbound_spi == outbound_spi && !c.rekeyed).map(|c| c.inbound_spi)
    }

    fn by_inbound(&self, spi: u32) -> Option<usize> {
        self.list.iter().position(|c| c.inbound_spi == spi)
    }

    fn by_outbound(&self, spi: u32) -> Option<usize> {
        self.list.iter().position(|c| c.outbound_spi == spi)
    }

    /// The earliest Child SA timer.
    pub(super) fn timeout(&self) -> Option<Instant> {
        let pending = self.list.iter().filter_map(|c| c.pending_outbound.as_ref().map(|(_, at)| *at));
        // A Child SA being rekeyed waits for the exchange, not for its rekey time again.
        let rekeys = self.list.iter().filter(|c| !c.rekeyed && !c.rekey_queued).map(|c| c.rekey_at);
        self.list.iter().map(|c| c.expire_at).chain(rekeys).chain(pending).min()
    }

    /// Takes in the Child SAs of the IKE SA this one replaced.
    pub(super) fn adopt(&mut self, other: Children) {
        self.list.extend(other.list);
        self.collision_nonces.extend(other.collision_nonces);
    }

    /// Held-back outbound SAs whose DELETE did not come are used; expired Child SAs go.
    /// Returns the inbound SPIs of the Child SAs due for a rekey.
    pub(super) fn tick(&mut self, cx: &mut Context, peer: PeerIndex, now: Instant) -> Vec<u32> {
        for child in self.list.iter_mut() {
            if let Some((keys, _)) = child.pending_outbound.take_if(|(_, at)| now >= *at) {
                cx.events.push_back(Event::InstallOutbound { peer, sa: keys, peer_has_inbound: false });
            }
        }
        let (expired, kept): (Vec<Child>, Vec<Child>) =
            std::mem::take(&mut self.list).into_iter().partition(|c| now >= c.expire_at);
        self.list = kept;
        for child in expired {
            tracing::warn!(spi = format_args!("{:#010x}", child.inbound_spi), "Child SA expired before it was rekeyed");
            cx.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
            cx.events.push_back(Event::RemoveInbound { peer, spi: child.inbound_spi });
        }
        let due = self.list.iter_mut().filter(|c| !c.rekeyed && !c.rekey_queued && now >= c.rekey_at);
        due.map(|c| {
            c.rekey_queued = true;
            c.inbound_spi
        })
        .collect()
    }

    /// Uses the outbound halves held back for a replaced Child SA now.
    fn release_pending(&mut self, cx: &mut Context, peer: PeerIndex) {
        for child in self.list.iter_mut() {
            if let Some((keys, _)) = child.pending_outbound.take() {
                // Not known: in a collision, a DELETE can come before the peer had our answer.
                cx.events.push_back(Event::InstallOutbound { peer, sa: keys, peer_has_inbound: false });
            }
        }
    }

    /// Takes a Child SA out: the outbound half goes now, the inbound half after the grace
    /// period. With `replaced`, the replacement held back for it sends from now on (its event
    /// comes first, so that the driver never lacks an outbound SA in between).
    fn retire(&mut self, cx: &mut Context, peer: PeerIndex, index: usize, replaced: bool, now: Instant) -> u32 {
        let child = self.list.remove(index);
        if replaced {
            self.release_pending(cx, peer);
        }
        cx.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
        cx.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
        child.inbound_spi
    }
}

/// RFC 7296 §2.8.1: of crossed rekeys of one Child SA, the exchange with the lowest nonce
/// loses; true if ours (nonces `ni`, `nr`) lost to one of `theirs`.
pub(super) fn lost_collision(ni: &[u8], nr: &[u8], theirs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let lowest_ours = ni.min(nr);
    theirs.iter().any(|(their_ni, their_nr)| lowest_ours < their_ni.as_slice().min(their_nr.as_slice()))
}

/// How a new Child SA's outbound half is put to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildInstall {
    /// Made in IKE_AUTH: both directions at once (unless this IKE SA lost to a duplicate).
    Both { outbound_allowed: bool },
    /// We asked for the rekey: we send on it at once (unless this IKE SA lost to a duplicate).
    RekeyInitiator { outbound_allowed: bool },
    /// The peer asked: we send on it once the peer deleted the old one.
    RekeyResponder,
}

/// A Child SA agreed on, to install.
pub(super) struct NewChild<'a> {
    pub(super) chosen: ChosenEsp,
    pub(super) inbound_spi: u32,
    pub(super) mode: Mode,
    /// The fresh Diffie-Hellman secret of a rekey with PFS.
    pub(super) shared_secret: Option<&'a [u8]>,
    pub(super) ni: &'a [u8],
    pub(super) nr: &'a [u8],
    pub(super) install: ChildInstall,
    /// The keys of the IKE SA the exchange ran over, when that is not this one (it was
    /// replaced by a rekey meanwhile): the Child SA's keys come from its SK_d.
    pub(super) exchange_keys: Option<&'a IkeSaKeys>,
}

/// Our Child SA rekey request, now answered.
pub(super) struct OurRekey {
    pub(super) old_inbound_spi: u32,
    pub(super) new_inbound_spi: u32,
    pub(super) ni: Vec<u8>,
}

impl IkeSa {
    /// Derives a Child SA's keys and hands them to the driver.
    pub(super) fn add_child(
        &mut self,
        cx: &mut Context,
        peer: PeerIndex,
        new: NewChild<'_>,
        now: Instant,
    ) -> Result<(), Failure> {
        let NewChild { chosen, inbound_spi, mode, shared_secret, ni, nr, install, exchange_keys } = new;
        let derived = exchange_keys
            .unwrap_or(&self.keys)
            .child_sa_keys(chosen.cipher, shared_secret, ni, nr)
            .map_err(|_| Failure::Local(LocalError::Crypto("derive Child SA keys")))?;
        let initiator_of_exchange = match install {
            ChildInstall::Both { .. } => self.initiator,
            ChildInstall::RekeyInitiator { .. } => true,
            ChildInstall::RekeyResponder => false,
        };
        let role = if initiator_of_exchange { Role::Initiator } else { Role::Responder };
        let (inbound_key, outbound_key) = split_keys(derived, role);
        let remote =
            if self.local_port == NAT_T_PORT { self.remote } else { SocketAddr::new(self.remote.ip(), NAT_T_PORT) };
        let keys_for = |spi: u32, key| ChildSaKeys { spi, cipher: chosen.cipher, esn: chosen.esn, mode, remote, key };
        let lifetime = cx.settings.child_lifetime;
        let mut child = Child {
            inbound_spi,
            outbound_spi: chosen.spi,
            mode,
            rekey_at: now + cx.rekey_after(lifetime, self.initiator)?,
            expire_at: now + lifetime,
            pending_outbound: None,
            rekeyed: false,
            rekey_queued: false,
            rekey_answer: None,
        };
        cx.events.push_back(Event::InstallInbound { peer, sa: keys_for(inbound_spi, inbound_key) });
        let outbound = keys_for(chosen.spi, outbound_key);
        let sends_now = match install {
            ChildInstall::Both { outbound_allowed } | ChildInstall::RekeyInitiator { outbound_allowed } => {
                if outbound_allowed {
                    let peer_has_inbound = initiator_of_exchange;
                    cx.events.push_back(Event::InstallOutbound { peer, sa: outbound, peer_has_inbound });
                }
                outbound_allowed
            }
            ChildInstall::RekeyResponder => {
                child.pending_outbound = Some((outbound, now + OUTBOUND_SWITCH_DELAY));
                false
            }
        };
        tracing::info!(
            peer = %cx.peer_address(peer),
            inbound = format_args!("{inbound_spi:#010x}"),
            outbound = format_args!("{:#010x}", chosen.spi),
            cipher = %chosen.cipher,
            %mode,
            esn = chosen.esn,
            outbound_in_use = sends_now,
            "Child SA installed"
        );
        self.children.list.push(child);
        Ok(())
    }

    /// Removes the Child SAs from the SADB (inbound after the grace period unless `now_too`).
    pub(super) fn remove_children(&mut self, cx: &mut Context, now: Instant, now_too: bool) {
        let Some(peer) = self.peer else { return };
        for child in self.children.list.drain(..) {
            cx.events.push_back(Event::RemoveOutbound { peer, spi: child.outbound_spi });
            if now_too {
                cx.events.push_back(Event::RemoveInbound { peer, spi: child.inbound_spi });
            } else {
                cx.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
            }
        }
    }

    /// The peer deleted the Child SA it receives on with `outbound_spi`. Returns our inbound
    /// SPI of it (for the answering DELETE).
    pub(super) fn delete_child_by_outbound(
        &mut self,
        cx: &mut Context,
        outbound_spi: u32,
        now: Instant,
    ) -> Option<u32> {
        let peer = self.peer?;
        let index = self.children.by_outbound(outbound_spi)?;
        Some(self.children.retire(cx, peer, index, true, now))
    }

    /// The ESP proposal and mode for a Child SA request, or the error notify to answer.
    pub(super) fn negotiate_child(
        &self,
        cx: &Context,
        peer: PeerIndex,
        payloads: &[Payload],
    ) -> Result<(ChosenEsp, bool), u16> {
        let (peer_address, port) = (cx.peer_address(peer), cx.settings.vxlan_port);
        let chosen = Parts::of(payloads)
            .security_association
            .and_then(|offer| proposal::choose_esp(offer, &cx.ciphers, cx.settings.esn))
            .ok_or(notify::NO_PROPOSAL_CHOSEN)?;
        let ts_ok = payloads.iter().any(|p| matches!(p, Payload::TrafficSelectorInitiator(ts) if proposal::selectors_cover(ts, peer_address, port)))
            && payloads.iter().any(|p| matches!(p, Payload::TrafficSelectorResponder(ts) if proposal::selectors_cover(ts, cx.settings.local, port)));
        if !ts_ok {
            return Err(notify::TS_UNACCEPTABLE);
        }
        Ok((chosen, has_notify(payloads, notify::USE_TRANSPORT_MODE)))
    }

    pub(super) fn start_child_rekey(
        &mut self,
        cx: &mut Context,
        old_inbound_spi: u32,
        now: Instant,
    ) -> Result<(), Failure> {
        let Some(peer) = self.peer else { return Ok(()) };
        // Already rekeyed, or gone (expired or deleted) while the request waited: nothing to do.
        let Some(index) = self.children.by_inbound(old_inbound_spi).filter(|i| !self.children.list[*i].rekeyed) else {
            return Ok(());
        };
        let new_inbound_spi = rng::esp_spi(cx.rng.as_mut())?;
        let nonce = rng::nonce(cx.rng.as_mut())?;
        let child = &mut self.children.list[index];
        child.rekeyed = true;
        let mut rekey = Notify::new(notify::REKEY_SA, Vec::new());
        rekey.protocol_id = protocol::ESP;
        rekey.spi = old_inbound_spi.to_be_bytes().to_vec();
        let mut payloads = vec![Payload::Notify(rekey)];
        if child.mode == Mode::Transport {
            payloads.push(flag(notify::USE_TRANSPORT_MODE));
        }
        let port = cx.settings.vxlan_port;
        payloads.push(Payload::SecurityAssociation(proposal::esp_offer(&cx.ciphers, new_inbound_spi, cx.settings.esn)));
        payloads.push(Payload::Nonce(Nonce { data: nonce.clone() }));
        payloads.push(Payload::TrafficSelectorInitiator(proposal::node_selector(cx.settings.local, port)));
        payloads.push(Payload::TrafficSelectorResponder(proposal::node_selector(cx.peer_address(peer), port)));
        let purpose = Purpose::RekeyChild { old_inbound_spi, new_inbound_spi, nonce };
        self.send_request(cx, exchange::CREATE_CHILD_SA, &payloads, purpose, now)?;
        // meshd answers a rekey but keeps sending on the old SA until our DELETE; another
        // implementation may switch at once.
        cx.events.push_back(Event::ExpectInbound { peer, spi: new_inbound_spi });
        Ok(())
    }

    /// The answer to our Child SA rekey.
    pub(super) fn finish_child_rekey(
        &mut self,
        cx: &mut Context,
        payloads: &[Payload],
        rekey: OurRekey,
        outbound_allowed: bool,
        exchange_keys: Option<&IkeSaKeys>,
        now: Instant,
    ) -> Result<(), Failure> {
        let Some(peer) = self.peer else { return Ok(()) };
        let OurRekey { old_inbound_spi, new_inbound_spi, ni } = rekey;
        let parts = Parts::of(payloads);
        let chosen =
            parts.security_association.and_then(|answer| proposal::choose_esp(answer, &cx.ciphers, cx.settings.esn));
        let (Some(chosen), Some(nr)) = (chosen, parts.nonce) else {
            // The peer refused (it may be rekeying itself); the child stays as it is.
            let error = notifies(payloads).find(|n| n.is_error()).map(|n| n.notify_type);
            tracing::debug!(?error, "the peer refused our Child SA rekey; keeping the Child SA");
            if let Some(index) = self.children.by_inbound(old_inbound_spi) {
                let child = &mut self.children.list[index];
                (child.rekeyed, child.rekey_queued) = (false, false);
            }
            return Ok(());
        };
        let nr = nr.to_vec();
        let mode = self.children.by_inbound(old_inbound_spi).map_or(Mode::Tunnel, |i| self.children.list[i].mode);
        let lost = lost_collision(&ni, &nr, &self.children.collision_nonces);
        let install = ChildInstall::RekeyInitiator { outbound_allowed };
        let new = NewChild {
            chosen,
            inbound_spi: new_inbound_spi,
            mode,
            shared_secret: None,
            ni: &ni,
            nr: &nr,
            install,
            exchange_keys,
        };
        self.add_child(cx, peer, new, now)?;
        self.children.collision_nonces.clear();
        if lost {
            // Our new Child SA is the redundant one: delete it, keep the peer's.
            tracing::debug!("Child SA rekey collision: deleting our redundant Child SA");
            if let Some(index) = self.children.by_inbound(new_inbound_spi) {
                let child = self.children.list.remove(index);
                cx.retiring.push((peer, child.inbound_spi, now + INBOUND_GRACE));
            }
            self.queue(cx, Queued::DeleteChild(vec![new_inbound_spi]), now)?;
        }
        // The old Child SA goes: tell the peer, keep accepting on it briefly.
        // When ours lost, the peer's new Child SA (held back) replaces it.
        if let Some(index) = self.children.by_inbound(old_inbound_spi) {
            self.children.retire(cx, peer, index, lost, now);
            self.queue(cx, Queued::DeleteChild(vec![old_inbound_spi]), now)?;
        }
        Ok(())
    }

    /// A CREATE_CHILD_SA request: an IKE SA rekey, or a Child SA rekey.
    pub(super) fn handle_create_child(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Next, Failure> {
        let Some(ni) = Parts::of(payloads).nonce.map(<[u8]>::to_vec) else {
            self.answer_notify(cx, request, notify::INVALID_SYNTAX, Vec::new())?;
            return Ok(Next::Stay);
        };
        let ike_offer = payloads.iter().find_map(|p| match p {
            Payload::SecurityAssociation(offer) if offer.proposals.iter().any(|p| p.protocol_id == protocol::IKE) => {
                Some(offer)
            }
            _ => None,
        });
        if let Some(offer) = ike_offer {
            return self.answer_ike_rekey(cx, request, offer, &ni, Parts::of(payloads).key_exchange, now);
        }
        let old_spi = notifies(payloads)
            .find(|n| n.notify_type == notify::REKEY_SA && n.protocol_id == protocol::ESP)
            .and_then(|n| <[u8; 4]>::try_from(n.spi.as_slice()).ok())
            .map(u32::from_be_bytes);
        let Some(old_spi) = old_spi else {
            // New Child SAs beyond the one per pair are not part of this mesh.
            self.answer_notify(cx, request, notify::NO_ADDITIONAL_SAS, Vec::new())?;
            return Ok(Next::Stay);
        };
        self.answer_child_rekey(cx, request, payloads, old_spi, &ni, now)?;
        Ok(Next::Stay)
    }

    fn answer_child_rekey(
        &mut self,
        cx: &mut Context,
        request: Header,
        payloads: &[Payload],
        old_spi: u32,
        ni: &[u8],
        now: Instant,
    ) -> Result<(), Failure> {
        let (Some(peer), Some(index)) = (self.peer, self.children.by_outbound(old_spi)) else {
            return self.send_response(cx, request, &[child_not_found(old_spi)]);
        };
        if let Some(answer) = self.children.list[index].rekey_answer.clone() {
            // Rekeyed already at the peer's request: the same result, no second Child SA.
            return self.send_response(cx, request, &answer);
        }
        let old_mode = self.children.list[index].mode;
        let chosen = match self.negotiate_child(cx, peer, payloads) {
            Ok((chosen, _)) => chosen,
            Err(error) => return self.answer_notify(cx, request, error, Vec::new()),
        };
        let nr = rng::nonce(cx.rng.as_mut())?;
        let mut key_exchange = None;
        let mut shared = None;
        if chosen.dh {
            let Some(ke) = Parts::of(payloads).key_exchange else {
                return self.answer_notify(cx, request, notify::INVALID_KE_PAYLOAD, our_group());
            };
            let dh = X25519KeyPair::generate().map_err(|_| Failure::Local(LocalError::Crypto("make a key pair")))?;
            key_exchange = Some(Payload::KeyExchange(KeyExchange {
                group: diffie_hellman::CURVE25519,
                data: dh.public_key().to_vec(),
            }));
            match dh.agree(&ke.data) {
                Ok(secret) => shared = Some(secret),
                Err(_) => return self.answer_notify(cx, request, notify::INVALID_SYNTAX, Vec::new()),
            }
        }
        let inbound_spi = rng::esp_spi(cx.rng.as_mut())?;
        let port = cx.settings.vxlan_port;
        let mut response = Vec::new();
        if old_mode == Mode::Transport {
            response.push(flag(notify::USE_TRANSPORT_MODE));
        }
        response.push(Payload::SecurityAssociation(proposal::esp_answer(&chosen, inbound_spi)));
        response.push(Payload::Nonce(Nonce { data: nr.clone() }));
        response.extend(key_exchange);
        response.push(Payload::TrafficSelectorInitiator(proposal::node_selector(cx.peer_address(peer), port)));
        response.push(Payload::TrafficSelectorResponder(proposal::node_selector(cx.settings.local, port)));
        self.send_response(cx, request, &response)?;
        self.children.list[index].rekey_answer = Some(response);
        // A collision: our own rekey of the same Child SA is under way (RFC 7296 §2.8.1).
        let old_inbound = self.children.list[index].inbound_spi;
        if matches!(self.window.outstanding(), Some(Purpose::RekeyChild { old_inbound_spi, .. }) if *old_inbound_spi == old_inbound)
        {
            self.children.collision_nonces.push((ni.to_vec(), nr.clone()));
        }
        self.children.list[index].rekeyed = true;
        let secret = shared.as_ref().map(|s| &s[..]);
        let install = ChildInstall::RekeyResponder;
        let new = NewChild {
            chosen,
            inbound_spi,
            mode: old_mode,
            shared_secret: secret,
            ni,
            nr: &nr,
            install,
            exchange_keys: None,
        };
        self.add_child(cx, peer, new, now)
    }
}

fn split_keys(keys: DerivedChildKeys, role: Role) -> (crate::esp::KeyMaterial, crate::esp::KeyMaterial) {
    let (outbound, inbound) = keys.into_directions(role);
    (inbound, outbound)
}

#[cfg(test)]
mod tests {
    use super::lost_collision;

    /// RFC 7296 §2.8.1 with fixed nonces: the exchange whose lower nonce is the lowest of all
    /// four loses.
    #[test]
    fn the_exchange_with_the_lowest_nonce_loses() {
        let (low, mid, high, top) = ([0x01; 32], [0x40; 32], [0x80; 32], [0xff; 32]);
        let theirs = |ni: [u8; 32], nr: [u8; 32]| vec![(ni.to_vec(), nr.to_vec())];
        assert!(lost_collision(&low, &top, &theirs(mid, high)), "our Ni is the lowest");
        assert!(lost_collision(&top, &low, &theirs(high, mid)), "our Nr is the lowest");
        assert!(!lost_collision(&mid, &high, &theirs(top, low)), "their Nr is the lowest");
        assert!(!lost_collision(&mid, &top, &theirs(high, mid)), "a tie is no loss");
        assert!(!lost_collision(&low, &low, &[]), "no collision, no loss");
        // Nonces compare as byte strings: a shorter prefix is lower.
        assert!(lost_collision(&[0x40; 16], &top, &theirs(mid, top)));
    }
}
