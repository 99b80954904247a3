//! What we offer and what we accept: SA proposals for the IKE SA and for ESP Child SAs, and the
//! traffic selectors of a node pair.

use std::net::IpAddr;

use mesh_config::{Cipher, Proposal as ConfiguredProposal};

use super::message::ids::{
    diffie_hellman, encryption, extended_sequence_numbers, protocol, pseudorandom_function, transform,
};
use super::message::{Proposal, SecurityAssociation, TrafficSelector, TrafficSelectors, Transform};
use crate::wire::ipv4::PROTOCOL_UDP;

/// AES-GCM's Key Length attribute: we only do 256-bit keys.
const AES_KEY_BITS: u16 = 256;

fn encryption_transform(cipher: Cipher) -> Transform {
    let (transform_id, key_length) = match cipher {
        Cipher::Aes256Gcm16 => (encryption::AES_GCM_16, Some(AES_KEY_BITS)),
        Cipher::Chacha20Poly1305 => (encryption::CHACHA20_POLY1305, None),
    };
    Transform { transform_type: transform::ENCRYPTION, transform_id, key_length, other_attributes: Vec::new() }
}

fn simple_transform(transform_type: u8, transform_id: u16) -> Transform {
    Transform { transform_type, transform_id, key_length: None, other_attributes: Vec::new() }
}

/// The cipher an ENCR transform names, if it is one we do.
fn cipher_of(transform: &Transform) -> Option<Cipher> {
    if !transform.other_attributes.is_empty() {
        return None;
    }
    match (transform.transform_id, transform.key_length) {
        (encryption::AES_GCM_16, Some(AES_KEY_BITS)) => Some(Cipher::Aes256Gcm16),
        (encryption::CHACHA20_POLY1305, None) => Some(Cipher::Chacha20Poly1305),
        _ => None,
    }
}

/// The IKE SA proposals, in preference order; `spi` is empty in IKE_SA_INIT and our new
/// 8-byte SPI when rekeying the IKE SA.
pub fn ike_offer(proposals: &[ConfiguredProposal], spi: &[u8]) -> SecurityAssociation {
    let proposals = proposals
        .iter()
        .enumerate()
        .map(|(index, proposal)| Proposal {
            number: index as u8 + 1,
            protocol_id: protocol::IKE,
            spi: spi.to_vec(),
            transforms: vec![
                encryption_transform(proposal.cipher),
                simple_transform(transform::PSEUDORANDOM_FUNCTION, pseudorandom_function::HMAC_SHA2_256),
                simple_transform(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519),
            ],
        })
        .collect();
    SecurityAssociation { proposals }
}

/// The ESP proposals for a Child SA that we receive on `inbound_spi`, one per cipher; ESN is
/// offered (preferred) when `esn` is true, and no-ESN always, so peers without ESN can choose.
pub fn esp_offer(ciphers: &[Cipher], inbound_spi: u32, esn: bool) -> SecurityAssociation {
    let proposals = ciphers
        .iter()
        .enumerate()
        .map(|(index, cipher)| {
            let mut transforms = vec![encryption_transform(*cipher)];
            if esn {
                transforms.push(simple_transform(transform::EXTENDED_SEQUENCE_NUMBERS, extended_sequence_numbers::YES));
            }
            transforms.push(simple_transform(transform::EXTENDED_SEQUENCE_NUMBERS, extended_sequence_numbers::NO));
            Proposal {
                number: index as u8 + 1,
                protocol_id: protocol::ESP,
                spi: inbound_spi.to_be_bytes().to_vec(),
                transforms,
            }
        })
        .collect();
    SecurityAssociation { proposals }
}

/// An IKE SA proposal we accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenIke {
    pub number: u8,
    pub cipher: Cipher,
    /// The SPI in the proposal (empty in IKE_SA_INIT).
    pub spi: Vec<u8>,
}

/// An ESP proposal we accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChosenEsp {
    pub number: u8,
    pub cipher: Cipher,
    pub esn: bool,
    /// The SPI the proposal's sender receives on.
    pub spi: u32,
    /// Whether the proposal asks for a Diffie-Hellman exchange (PFS in CREATE_CHILD_SA).
    pub dh: bool,
}

/// The first proposal of the peer's (in its order) that uses only transforms we do and a
/// cipher we allow. Every transform type must have exactly one acceptable choice.
pub fn choose_ike(offer: &SecurityAssociation, allowed: &[Cipher]) -> Option<ChosenIke> {
    offer.proposals.iter().filter(|p| p.protocol_id == protocol::IKE).find_map(|proposal| {
        let cipher = proposal
            .transforms
            .iter()
            .filter(|t| t.transform_type == transform::ENCRYPTION)
            .filter_map(cipher_of)
            .find(|c| allowed.contains(c))?;
        let has =
            |kind: u8, id: u16| proposal.transforms.iter().any(|t| t.transform_type == kind && t.transform_id == id);
        let ok = has(transform::PSEUDORANDOM_FUNCTION, pseudorandom_function::HMAC_SHA2_256)
            && has(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519)
            && !proposal.transforms.iter().any(|t| t.transform_type == transform::INTEGRITY && t.transform_id != 0);
        ok.then(|| ChosenIke { number: proposal.number, cipher, spi: proposal.spi.clone() })
    })
}

/// Like [`choose_ike`] for ESP: cipher, ESN (ours if allowed and offered), optional DH.
pub fn choose_esp(offer: &SecurityAssociation, allowed: &[Cipher], esn_allowed: bool) -> Option<ChosenEsp> {
    offer.proposals.iter().filter(|p| p.protocol_id == protocol::ESP && p.spi.len() == 4).find_map(|proposal| {
        let cipher = proposal
            .transforms
            .iter()
            .filter(|t| t.transform_type == transform::ENCRYPTION)
            .filter_map(cipher_of)
            .find(|c| allowed.contains(c))?;
        let esn_choices: Vec<u16> = proposal
            .transforms
            .iter()
            .filter(|t| t.transform_type == transform::EXTENDED_SEQUENCE_NUMBERS)
            .map(|t| t.transform_id)
            .collect();
        let esn = if esn_allowed && esn_choices.contains(&extended_sequence_numbers::YES) {
            true
        } else if esn_choices.is_empty() || esn_choices.contains(&extended_sequence_numbers::NO) {
            false
        } else {
            return None;
        };
        let dh_choices: Vec<u16> = proposal
            .transforms
            .iter()
            .filter(|t| t.transform_type == transform::DIFFIE_HELLMAN)
            .map(|t| t.transform_id)
            .collect();
        let dh = match dh_choices.as_slice() {
            [] => false,
            choices if choices.contains(&diffie_hellman::CURVE25519) => true,
            choices if choices.contains(&0) => false,
            _ => return None,
        };
        let spi = u32::from_be_bytes([proposal.spi[0], proposal.spi[1], proposal.spi[2], proposal.spi[3]]);
        Some(ChosenEsp { number: proposal.number, cipher, esn, spi, dh })
    })
}

/// Our answer to an accepted IKE proposal: that proposal with only the chosen transforms.
pub fn ike_answer(chosen: &ChosenIke, spi: &[u8]) -> SecurityAssociation {
    SecurityAssociation {
        proposals: vec![Proposal {
            number: chosen.number,
            protocol_id: protocol::IKE,
            spi: spi.to_vec(),
            transforms: vec![
                encryption_transform(chosen.cipher),
                simple_transform(transform::PSEUDORANDOM_FUNCTION, pseudorandom_function::HMAC_SHA2_256),
                simple_transform(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519),
            ],
        }],
    }
}

/// Our answer to an accepted ESP proposal, carrying the SPI we receive on.
pub fn esp_answer(chosen: &ChosenEsp, inbound_spi: u32) -> SecurityAssociation {
    let esn = if chosen.esn { extended_sequence_numbers::YES } else { extended_sequence_numbers::NO };
    let mut transforms =
        vec![encryption_transform(chosen.cipher), simple_transform(transform::EXTENDED_SEQUENCE_NUMBERS, esn)];
    if chosen.dh {
        transforms.push(simple_transform(transform::DIFFIE_HELLMAN, diffie_hellman::CURVE25519));
    }
    SecurityAssociation {
        proposals: vec![Proposal {
            number: chosen.number,
            protocol_id: protocol::ESP,
            spi: inbound_spi.to_be_bytes().to_vec(),
            transforms,
        }],
    }
}

/// The traffic selector of one node of the pair: `address/32[udp/port]`.
pub fn node_selector(address: IpAddr, port: u16) -> TrafficSelectors {
    TrafficSelectors { selectors: vec![TrafficSelector::host(address, PROTOCOL_UDP, port)] }
}

/// Whether the peer's selectors include exactly what this pair needs for `address`.
pub fn selectors_cover(offered: &TrafficSelectors, address: IpAddr, port: u16) -> bool {
    offered.selectors.iter().any(|selector| {
        let protocol_ok = selector.ip_protocol == PROTOCOL_UDP || selector.ip_protocol == 0;
        let port_ok = selector.start_port <= port && port <= selector.end_port;
        let address_ok = selector.start_address <= address && address <= selector.end_address;
        protocol_ok && port_ok && address_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::{DhGroup, Prf};

    fn configured(cipher: Cipher) -> ConfiguredProposal {
        ConfiguredProposal { cipher, prf: Prf::HmacSha256, group: DhGroup::X25519 }
    }

    #[test]
    fn ike_offers_are_chosen_in_the_peer_order_within_what_we_allow() {
        let offer = ike_offer(&[configured(Cipher::Chacha20Poly1305), configured(Cipher::Aes256Gcm16)], &[]);
        let both = [Cipher::Aes256Gcm16, Cipher::Chacha20Poly1305];
        assert_eq!(choose_ike(&offer, &both).unwrap().cipher, Cipher::Chacha20Poly1305);
        let chosen = choose_ike(&offer, &[Cipher::Aes256Gcm16]).unwrap();
        assert_eq!((chosen.number, chosen.cipher), (2, Cipher::Aes256Gcm16));
        assert!(choose_ike(&ike_offer(&[configured(Cipher::Aes256Gcm16)], &[]), &[Cipher::Chacha20Poly1305]).is_none());
        // The answer is accepted by the offerer.
        assert_eq!(choose_ike(&ike_answer(&chosen, &[]), &both).unwrap().cipher, Cipher::Aes256Gcm16);
    }

    #[test]
    fn esp_esn_is_taken_when_both_allow_it() {
        let offer = esp_offer(&[Cipher::Aes256Gcm16], 0x1234, true);
        let chosen = choose_esp(&offer, &[Cipher::Aes256Gcm16], true).unwrap();
        assert_eq!((chosen.spi, chosen.esn, chosen.dh), (0x1234, true, false));
        assert!(!choose_esp(&offer, &[Cipher::Aes256Gcm16], false).unwrap().esn);
        let no_esn = esp_offer(&[Cipher::Chacha20Poly1305], 7, false);
        assert!(!choose_esp(&no_esn, Cipher::ALL, true).unwrap().esn);
        let answer = esp_answer(&chosen, 0x9999);
        let back = choose_esp(&answer, &[Cipher::Aes256Gcm16], true).unwrap();
        assert_eq!((back.spi, back.esn), (0x9999, true));
    }

    #[test]
    fn selectors_must_cover_the_pair() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        assert!(selectors_cover(&node_selector(a, 4790), a, 4790));
        assert!(!selectors_cover(&node_selector(a, 4790), b, 4790));
        assert!(!selectors_cover(&node_selector(a, 4789), a, 4790));
    }
}
