//! Mutual challenge-response over the shared secret: each side sends a fresh nonce and proves
//! it holds the secret by an HMAC-SHA256 over both nonces, labelled by direction so one side's
//! proof cannot be replayed as the other's. The secret itself never crosses the wire, and
//! proofs are compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::NONCE_LEN;

type HmacSha256 = Hmac<Sha256>;
pub const MAC_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"pdq-kv client v2";
const SERVER_LABEL: &[u8] = b"pdq-kv server v2";

pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

fn mac(secret: &[u8], label: &[u8], first: &[u8], second: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(label);
    m.update(first);
    m.update(second);
    m
}

/// What the client sends to prove itself: over the server's nonce, then its own.
pub fn client_proof(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> [u8; MAC_LEN] {
    mac(secret, CLIENT_LABEL, server_nonce, client_nonce).finalize().into_bytes().into()
}

pub fn server_proof(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> [u8; MAC_LEN] {
    mac(secret, SERVER_LABEL, client_nonce, server_nonce).finalize().into_bytes().into()
}

pub fn verify_client(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8], proof: &[u8]) -> bool {
    mac(secret, CLIENT_LABEL, server_nonce, client_nonce).verify_slice(proof).is_ok()
}

pub fn verify_server(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8], proof: &[u8]) -> bool {
    mac(secret, SERVER_LABEL, client_nonce, server_nonce).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_direction() {
        let (s, c) = (nonce(), nonce());
        let p = client_proof(b"k1", &s, &c);
        assert!(verify_client(b"k1", &s, &c, &p));
        assert!(!verify_client(b"k2", &s, &c, &p));
        assert!(!verify_server(b"k1", &s, &c, &p), "a client proof is not a server proof");
        assert!(!verify_client(b"k1", &nonce(), &c, &p), "a proof is bound to its nonces");
        assert_ne!(nonce(), nonce());
    }
}
