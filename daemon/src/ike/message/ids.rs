//! IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" numbers that the subset in
//! docs/ike.md uses, grouped by registry. Plain constants rather than enums: the wire carries
//! values we do not know, and they must survive parsing so that they can be refused by number.

/// Exchange types (RFC 7296 §3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;

    /// The registry name of an exchange type, for logs.
    pub fn name(exchange_type: u8) -> Option<&'static str> {
        Some(match exchange_type {
            IKE_SA_INIT => "IKE_SA_INIT",
            IKE_AUTH => "IKE_AUTH",
            CREATE_CHILD_SA => "CREATE_CHILD_SA",
            INFORMATIONAL => "INFORMATIONAL",
            _ => return None,
        })
    }
}

/// Bits of the IKE header's Flags field (RFC 7296 §3.1).
pub mod flag {
    /// Set in messages sent by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    /// "Can speak a higher major version": always clear in what we send, ignored on receipt.
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

/// Payload types (RFC 7296 §3.2), as carried in Next Payload fields.
pub mod payload {
    /// "No Next Payload": the end of a chain.
    pub const NONE: u8 = 0;
    pub const SECURITY_ASSOCIATION: u8 = 33;
    pub const KEY_EXCHANGE: u8 = 34;
    pub const IDENTIFICATION_INITIATOR: u8 = 35;
    pub const IDENTIFICATION_RESPONDER: u8 = 36;
    pub const CERTIFICATE: u8 = 37;
    pub const CERTIFICATE_REQUEST: u8 = 38;
    pub const AUTHENTICATION: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TRAFFIC_SELECTOR_INITIATOR: u8 = 44;
    pub const TRAFFIC_SELECTOR_RESPONDER: u8 = 45;
    /// SK: the encrypted and authenticated payload; always the last one of a message.
    pub const ENCRYPTED: u8 = 46;
    pub const CONFIGURATION: u8 = 47;
    pub const EXTENSIBLE_AUTHENTICATION: u8 = 48;

    /// The RFC 7296 notation of a payload type (SA, KE, IDi…), for logs.
    pub fn name(payload_type: u8) -> Option<&'static str> {
        Some(match payload_type {
            NONE => "none",
            SECURITY_ASSOCIATION => "SA",
            KEY_EXCHANGE => "KE",
            IDENTIFICATION_INITIATOR => "IDi",
            IDENTIFICATION_RESPONDER => "IDr",
            CERTIFICATE => "CERT",
            CERTIFICATE_REQUEST => "CERTREQ",
            AUTHENTICATION => "AUTH",
            NONCE => "Ni/Nr",
            NOTIFY => "N",
            DELETE => "D",
            VENDOR_ID => "V",
            TRAFFIC_SELECTOR_INITIATOR => "TSi",
            TRAFFIC_SELECTOR_RESPONDER => "TSr",
            ENCRYPTED => "SK",
            CONFIGURATION => "CP",
            EXTENSIBLE_AUTHENTICATION => "EAP",
            _ => return None,
        })
    }
}

/// Security protocol identifiers (RFC 7296 §3.3.1), in proposals, Notify and Delete payloads.
pub mod protocol {
    /// In a Notify payload: the notification does not concern a particular SA.
    pub const NONE: u8 = 0;
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Transform types (RFC 7296 §3.3.2).
pub mod transform {
    pub const ENCRYPTION: u8 = 1;
    pub const PSEUDORANDOM_FUNCTION: u8 = 2;
    pub const INTEGRITY: u8 = 3;
    pub const DIFFIE_HELLMAN: u8 = 4;
    pub const EXTENDED_SEQUENCE_NUMBERS: u8 = 5;
}

/// Transform IDs of transform type 1, encryption algorithms.
pub mod encryption {
    /// AES-GCM with a 16-byte ICV (RFC 5282); needs the Key Length attribute.
    pub const AES_GCM_16: u16 = 20;
    /// RFC 7634; fixed 256-bit key, so no Key Length attribute.
    pub const CHACHA20_POLY1305: u16 = 28;
}

/// Transform IDs of transform type 2, pseudorandom functions.
pub mod pseudorandom_function {
    pub const HMAC_SHA2_256: u16 = 5;
}

/// Transform IDs of transform type 4, key exchange (Diffie-Hellman) groups; also the group
/// number of a KE payload.
pub mod diffie_hellman {
    /// Curve25519 (RFC 8031).
    pub const CURVE25519: u16 = 31;
}

/// Transform IDs of transform type 5.
pub mod extended_sequence_numbers {
    pub const NO: u16 = 0;
    pub const YES: u16 = 1;
}

/// Transform attribute types (RFC 7296 §3.3.5).
pub mod attribute {
    /// Key length in bits; always in the short TV format.
    pub const KEY_LENGTH: u16 = 14;
}

/// Identification types of IDi/IDr payloads (RFC 7296 §3.5).
pub mod identification {
    /// Four octets of IPv4 address.
    pub const IPV4_ADDRESS: u8 = 1;
    /// Sixteen octets of IPv6 address.
    pub const IPV6_ADDRESS: u8 = 5;
}

/// Authentication methods of AUTH payloads (RFC 7296 §3.8).
pub mod authentication {
    pub const SHARED_KEY_MESSAGE_INTEGRITY_CODE: u8 = 2;
    /// RFC 7427: the AUTH data names its signature algorithm.
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// Hash algorithms of SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4, RFC 8420 §2).
pub mod hash_algorithm {
    /// No hash: the signature algorithm takes the message itself (Ed25519).
    pub const IDENTITY: u16 = 5;
}

/// Traffic selector types (RFC 7296 §3.13.1).
pub mod traffic_selector {
    pub const IPV4_ADDRESS_RANGE: u8 = 7;
    pub const IPV6_ADDRESS_RANGE: u8 = 8;
}

/// Notify message types (RFC 7296 §3.10.1). Types below [`notify::FIRST_STATUS`] are errors.
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const INVALID_SELECTORS: u16 = 39;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;

    /// The first status (non-error) type; unknown error types still mean failure, unknown
    /// status types are ignored (RFC 7296 §3.10.1).
    pub const FIRST_STATUS: u16 = 16384;

    pub const INITIAL_CONTACT: u16 = 16384;
    pub const SET_WINDOW_SIZE: u16 = 16385;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const NON_FIRST_FRAGMENTS_ALSO: u16 = 16395;
    /// RFC 7427.
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
    /// meshd's own, from the private-use status range 40960..65535 (RFC 7296 §3.10.1): "I answer
    /// path-MTU probes (ESP next header 253)". Other implementations ignore it.
    pub const MESHD_PATH_MTU_PROBES: u16 = 40960 + 0x4d50;

    /// True for the error range 0..16383.
    pub fn is_error(notify_type: u16) -> bool {
        notify_type < FIRST_STATUS
    }

    /// The registry name of a notify type listed here, for logs.
    pub fn name(notify_type: u16) -> Option<&'static str> {
        Some(match notify_type {
            UNSUPPORTED_CRITICAL_PAYLOAD => "UNSUPPORTED_CRITICAL_PAYLOAD",
            INVALID_IKE_SPI => "INVALID_IKE_SPI",
            INVALID_MAJOR_VERSION => "INVALID_MAJOR_VERSION",
            INVALID_SYNTAX => "INVALID_SYNTAX",
            INVALID_MESSAGE_ID => "INVALID_MESSAGE_ID",
            INVALID_SPI => "INVALID_SPI",
            NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN",
            INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD",
            AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED",
            SINGLE_PAIR_REQUIRED => "SINGLE_PAIR_REQUIRED",
            NO_ADDITIONAL_SAS => "NO_ADDITIONAL_SAS",
            INTERNAL_ADDRESS_FAILURE => "INTERNAL_ADDRESS_FAILURE",
            FAILED_CP_REQUIRED => "FAILED_CP_REQUIRED",
            TS_UNACCEPTABLE => "TS_UNACCEPTABLE",
            INVALID_SELECTORS => "INVALID_SELECTORS",
            TEMPORARY_FAILURE => "TEMPORARY_FAILURE",
            CHILD_SA_NOT_FOUND => "CHILD_SA_NOT_FOUND",
            INITIAL_CONTACT => "INITIAL_CONTACT",
            SET_WINDOW_SIZE => "SET_WINDOW_SIZE",
            NAT_DETECTION_SOURCE_IP => "NAT_DETECTION_SOURCE_IP",
            NAT_DETECTION_DESTINATION_IP => "NAT_DETECTION_DESTINATION_IP",
            COOKIE => "COOKIE",
            USE_TRANSPORT_MODE => "USE_TRANSPORT_MODE",
            REKEY_SA => "REKEY_SA",
            ESP_TFC_PADDING_NOT_SUPPORTED => "ESP_TFC_PADDING_NOT_SUPPORTED",
            NON_FIRST_FRAGMENTS_ALSO => "NON_FIRST_FRAGMENTS_ALSO",
            SIGNATURE_HASH_ALGORITHMS => "SIGNATURE_HASH_ALGORITHMS",
            MESHD_PATH_MTU_PROBES => "MESHD_PATH_MTU_PROBES",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        assert_eq!(exchange::name(exchange::CREATE_CHILD_SA), Some("CREATE_CHILD_SA"));
        assert_eq!(exchange::name(33), None);
        assert_eq!(payload::name(payload::ENCRYPTED), Some("SK"));
        assert_eq!(payload::name(49), None);
        assert_eq!(notify::name(notify::COOKIE), Some("COOKIE"));
        assert_eq!(notify::name(2), None);
        assert!(notify::is_error(notify::CHILD_SA_NOT_FOUND));
        assert!(notify::is_error(16383));
        assert!(!notify::is_error(notify::INITIAL_CONTACT));
    }
}
