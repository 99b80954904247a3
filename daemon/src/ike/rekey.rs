//! Rekeying the IKE SA itself (RFC 7296 §2.18): a CREATE_CHILD_SA exchange makes a successor
//! IKE SA with new SPIs and keys; the Child SAs move to it and the old one is deleted by the
//! rekey's initiator.

use std::time::Instant;

use super::context::Context;
use super::crypto::{IkeSaKeys, Role, SpiPair, X25519KeyPair};
use super::message::ids::{diffie_hellman, exchange, notify};
use super::message::{Header, KeyExchange, Nonce, Payload, SecurityAssociation};
use super::parts::{our_group, Parts};
use super::policy::{Origin, RECONNECT_INTERVAL};
use super::proposal;
use super::rng;
use super::sa::{IkeSa, NewIkeSa, Next, Phase};
use super::types::{Failure, LocalError, Refusal};
use super::window::Purpose;

fn key_derivation_failed<E>(_: E) -> Failure {
    Failure::Local(LocalError::Crypto("derive the rekeyed IKE SA's keys"))
}

impl IkeSa {
    pub(super) fn start_ike_rekey(&mut self, cx: &mut Context, now: Instant) -> Result<(), Failure> {
        let new_spi = cx.fresh_ike_spi()?;
        let dh = X25519KeyPair::generate().map_err(|_| Failure::Local(LocalError::Crypto("make a key pair")))?;
        let nonce = rng::nonce(cx.rng.as_mut())?;
        let payloads = vec![
            Payload::SecurityAssociation(proposal::ike_offer(&cx.settings.proposals, &new_spi.to_be_bytes())),
            Payload::Nonce(Nonce { data: nonce.clone() }),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: dh.public_key().to_vec() }),
        ];
        self.rekey_at = None;
        self.send_request(cx, exchange::CREATE_CHILD_SA, &payloads, Purpose::RekeyIke { new_spi, nonce, dh }, now)
    }

    /// The answer to our IKE SA rekey: the successor, and this SA goes.
    pub(super) fn finish_ike_rekey(
        &mut self,
        cx: &mut Context,
        payloads: &[Payload],
        new_spi: u64,
        ni: &[u8],
        dh: X25519KeyPair,
        now: Instant,
    ) -> Result<Next, Failure> {
        let parts = Parts::of(payloads);
        let chosen = parts.security_association.and_then(|offer| proposal::choose_ike(offer, &cx.ciphers));
        let (Some(chosen), Some(nr), Some(ke)) = (chosen, parts.nonce, parts.key_exchange) else {
            // Refused (a collision, or the peer is busy): try again later.
            self.rekey_at = Some(now + RECONNECT_INTERVAL);
            return Ok(Next::Stay);
        };
        let their_new_spi = <[u8; 8]>::try_from(chosen.spi.as_slice()).ok();
        let secret = dh.agree(&ke.data).ok();
        let (Some(their_new_spi), Some(secret)) = (their_new_spi, secret) else {
            cx.refuse(Refusal::Malformed, self.remote);
            self.rekey_at = Some(now + RECONNECT_INTERVAL);
            return Ok(Next::Stay);
        };
        let spis = SpiPair { initiator: new_spi.to_be_bytes(), responder: their_new_spi };
        let keys = self
            .keys
            .rekey(Role::Initiator, chosen.cipher, &secret[..], ni, nr, spis)
            .map_err(key_derivation_failed)?;
        let successor = self.successor(cx, new_spi, u64::from_be_bytes(their_new_spi), true, keys, now)?;
        self.start_deleting(cx, now)?;
        Ok(Next::Successor(Box::new(successor)))
    }

    /// The peer's request to rekey this IKE SA.
    pub(super) fn answer_ike_rekey(
        &mut self,
        cx: &mut Context,
        request: Header,
        offer: &SecurityAssociation,
        ni: &[u8],
        ke: Option<&KeyExchange>,
        now: Instant,
    ) -> Result<Next, Failure> {
        let Some(chosen) = proposal::choose_ike(offer, &cx.ciphers) else {
            self.answer_notify(cx, request, notify::NO_PROPOSAL_CHOSEN, Vec::new())?;
            return Ok(Next::Stay);
        };
        let Some(ke) = ke else {
            self.answer_notify(cx, request, notify::INVALID_KE_PAYLOAD, our_group())?;
            return Ok(Next::Stay);
        };
        let Ok(their_new_spi) = <[u8; 8]>::try_from(chosen.spi.as_slice()) else {
            self.answer_notify(cx, request, notify::INVALID_SYNTAX, Vec::new())?;
            return Ok(Next::Stay);
        };
        let dh = X25519KeyPair::generate().map_err(|_| Failure::Local(LocalError::Crypto("make a key pair")))?;
        let our_public = dh.public_key().to_vec();
        let Ok(secret) = dh.agree(&ke.data) else {
            self.answer_notify(cx, request, notify::INVALID_SYNTAX, Vec::new())?;
            return Ok(Next::Stay);
        };
        let new_spi = cx.fresh_ike_spi()?;
        let nr = rng::nonce(cx.rng.as_mut())?;
        let spis = SpiPair { initiator: their_new_spi, responder: new_spi.to_be_bytes() };
        let keys = self
            .keys
            .rekey(Role::Responder, chosen.cipher, &secret[..], ni, &nr, spis)
            .map_err(key_derivation_failed)?;
        let payloads = vec![
            Payload::SecurityAssociation(proposal::ike_answer(&chosen, &new_spi.to_be_bytes())),
            Payload::Nonce(Nonce { data: nr }),
            Payload::KeyExchange(KeyExchange { group: diffie_hellman::CURVE25519, data: our_public }),
        ];
        self.send_response(cx, request, &payloads)?;
        let successor = self.successor(cx, new_spi, u64::from_be_bytes(their_new_spi), false, keys, now)?;
        Ok(Next::Successor(Box::new(successor)))
    }

    /// The IKE SA that replaces this one; the Child SAs move to it.
    fn successor(
        &mut self,
        cx: &mut Context,
        new_spi: u64,
        their_spi: u64,
        we_initiated: bool,
        keys: IkeSaKeys,
        now: Instant,
    ) -> Result<IkeSa, Failure> {
        let mut new = IkeSa::new(
            NewIkeSa {
                peer: self.peer,
                initiator: we_initiated,
                our_spi: new_spi,
                their_spi,
                keys,
                phase: Phase::Established { since: now },
                remote: self.remote,
                local_port: self.local_port,
                nat_detected: self.nat_detected,
                origin: Origin::Rekey,
                created: now,
            },
            now,
        );
        new.enter_established(cx, now)?;
        new.children = std::mem::take(&mut self.children);
        new.peer_auth = self.peer_auth;
        self.rekey_at = None;
        tracing::info!(remote = %new.remote, "IKE SA rekeyed");
        Ok(new)
    }
}
