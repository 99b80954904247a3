//! Pre-shared key authentication (RFC 7296 §2.15):
//!
//! ```text
//! AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
//! InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, RestOfInitIDPayload)
//! ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, RestOfRespIDPayload)
//! ```
//!
//! `RestOf…IDPayload` is the ID payload after its generic header: ID Type, three RESERVED
//! octets and the Identification Data.

use aws_lc_rs::constant_time;
use zeroize::Zeroizing;

use super::prf::{prf, prf_parts, PRF_OUTPUT_LEN};
use super::CryptoError;

/// The key pad (17 ASCII octets, no terminator).
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// The inputs of one side's signed octets.
#[derive(Clone, Copy)]
pub struct SignedOctets<'a> {
    /// The signer's first message (its IKE_SA_INIT request or response) exactly as sent, from
    /// the first octet of the IKE header (without a non-ESP marker) to the end.
    pub real_message: &'a [u8],
    /// The Nonce Data of the *other* side's Nonce payload (Nr for the initiator's AUTH, Ni for
    /// the responder's).
    pub peer_nonce: &'a [u8],
    /// The signer's ID payload body: ID Type, 3 RESERVED octets, Identification Data.
    pub id_payload_body: &'a [u8],
}

/// The AUTH data for `octets`, signed with the pre-shared key. `sk_p` is SK_pi for the
/// initiator's AUTH and SK_pr for the responder's.
pub fn psk_auth(psk: &[u8], sk_p: &[u8], octets: &SignedOctets<'_>) -> Zeroizing<[u8; 32]> {
    let key = prf(psk, KEY_PAD);
    let maced_id = prf(sk_p, octets.id_payload_body);
    prf_parts(&key[..], &[octets.real_message, octets.peer_nonce, &maced_id[..]])
}

/// Checks received AUTH data against [`psk_auth`], in constant time.
pub fn verify_psk_auth(psk: &[u8], sk_p: &[u8], octets: &SignedOctets<'_>, received: &[u8]) -> Result<(), CryptoError> {
    let expected = psk_auth(psk, sk_p, octets);
    if received.len() != PRF_OUTPUT_LEN {
        return Err(CryptoError::AuthMismatch);
    }
    constant_time::verify_slices_are_equal(&expected[..], received).map_err(|_| CryptoError::AuthMismatch)
}

impl core::fmt::Debug for SignedOctets<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SignedOctets")
            .field("real_message_len", &self.real_message.len())
            .field("peer_nonce_len", &self.peer_nonce.len())
            .field("id_payload_body_len", &self.id_payload_body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::{hex, to_hex, AuthVectors};

    const PSK: &[u8] = b"meshd test pre-shared key, 32+ bytes";
    // SK_pi and SK_pr as derived in keys.rs's test (same inputs).
    const SK_PI: &str = "721d76bb7099af838ea90083fb88845179dfff839f5de7a793fca39600e596e0";
    const SK_PR: &str = "e6cfe467ae5711adb853b46d93717b9a66e4cae8f4c28cb062dc95becee57c5e";

    /// Expected values computed independently with Python's hmac module (IDs are ID_IPV4_ADDR
    /// 198.18.0.1 and 198.18.0.2):
    ///
    /// ```text
    /// python3 -c "import hmac,hashlib;p=lambda k,d:hmac.new(k,d,hashlib.sha256).digest();psk=b'meshd test pre-shared key, 32+ bytes';Ni=bytes(range(32));Nr=bytes(range(32,64));pi=bytes.fromhex('721d76bb7099af838ea90083fb88845179dfff839f5de7a793fca39600e596e0');pr=bytes.fromhex('e6cfe467ae5711adb853b46d93717b9a66e4cae8f4c28cb062dc95becee57c5e');m1=b'IKE_SA_INIT request '*10;m2=b'IKE_SA_INIT response'*10;k=p(psk,b'Key Pad for IKEv2');print('AUTH_i',p(k,m1+Nr+p(pi,bytes.fromhex('01000000c6120001'))).hex());print('AUTH_r',p(k,m2+Ni+p(pr,bytes.fromhex('01000000c6120002'))).hex())"
    /// ```
    #[test]
    fn psk_auth_against_python() {
        let vectors = AuthVectors::new();
        let (i, r) = (vectors.initiator(), vectors.responder());
        let auth_i = "c41100f583054ee2f071ca65164169c5b501e22ca36b3117d9da3020880a1342";
        let auth_r = "82b9e2a0c417e40c6d4a220a60a217d3265a5f6b8455af61d6894b58416ed37f";
        assert_eq!(to_hex(&psk_auth(PSK, &hex(SK_PI), &i)[..]), auth_i);
        assert_eq!(to_hex(&psk_auth(PSK, &hex(SK_PR), &r)[..]), auth_r);
        verify_psk_auth(PSK, &hex(SK_PI), &i, &hex(auth_i)).unwrap();
        verify_psk_auth(PSK, &hex(SK_PR), &r, &hex(auth_r)).unwrap();
    }

    #[test]
    fn verify_rejects_any_change() {
        let sk = [5u8; 32];
        let msg = b"message one".to_vec();
        let nonce = [6u8; 32];
        let id = hex("01000000c6120001");
        let o = SignedOctets { real_message: &msg, peer_nonce: &nonce, id_payload_body: &id };
        let good = psk_auth(PSK, &sk, &o);
        verify_psk_auth(PSK, &sk, &o, &good[..]).unwrap();
        for i in 0..32 {
            let mut bad = *good;
            bad[i] ^= 1;
            assert_eq!(verify_psk_auth(PSK, &sk, &o, &bad).unwrap_err(), CryptoError::AuthMismatch);
        }
        for len in [0, 20, 31, 33, 64] {
            let mut v = good.to_vec();
            v.resize(len, 0);
            assert!(verify_psk_auth(PSK, &sk, &o, &v).is_err(), "len {len}");
        }
        assert!(verify_psk_auth(b"other psk", &sk, &o, &good[..]).is_err());
        assert!(verify_psk_auth(PSK, &[4u8; 32], &o, &good[..]).is_err());
        let other_id = hex("01000000c6120002");
        for changed in [
            SignedOctets { real_message: b"message two", ..o },
            SignedOctets { peer_nonce: &[7u8; 32], ..o },
            SignedOctets { id_payload_body: &other_id, ..o },
        ] {
            assert!(verify_psk_auth(PSK, &sk, &changed, &good[..]).is_err());
        }
    }
}
