//! The business servers of the config, found by token in constant time.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BusinessServer;

pub struct BusinessServers {
    known: Vec<KnownServer>,
}

struct KnownServer {
    token: String,
    token_digest: [u8; 32],
    server: BusinessServer,
}

/// A business server a request was authorized for.
pub struct Authorized<'a> {
    pub token_sha256: String,
    pub server: &'a BusinessServer,
}

impl BusinessServers {
    pub fn new(by_token: &HashMap<String, BusinessServer>) -> Self {
        let known = by_token
            .iter()
            .map(|(token, server)| KnownServer {
                token: token.clone(),
                token_digest: Sha256::digest(token.as_bytes()).into(),
                server: server.clone(),
            })
            .collect();
        Self { known }
    }

    /// Compares digests of equal length with every configured token, so the reply time tells
    /// nothing about how much of a guess was right.
    pub fn authorize(&self, token: &str) -> Option<Authorized<'_>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for known in &self.known {
            if bool::from(known.token_digest.ct_eq(&digest)) {
                found = Some(known);
            }
        }
        found.map(|known| Authorized { token_sha256: hex::encode(known.token_digest), server: &known.server })
    }

    /// Every configured token (an upload grant is checked against each).
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.known.iter().map(|known| known.token.as_str())
    }

    /// The business server a task was created for, with its token (to sign the callback).
    pub fn by_token_sha256(&self, token_sha256: &str) -> Option<(&str, &BusinessServer)> {
        self.known
            .iter()
            .find(|known| hex::encode(known.token_digest) == token_sha256)
            .map(|known| (known.token.as_str(), &known.server))
    }
}

/// `X-Fupload-Signature` of a callback body: HMAC-SHA256 keyed by the token.
pub fn sign(token: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorizes_known_tokens_only() {
        let servers = BusinessServers::new(&HashMap::from([(
            "Secret".to_owned(),
            BusinessServer { name: "cp1".into(), notify_url: "http://x/cb".into() },
        )]));
        let found = servers.authorize("Secret").unwrap();
        assert_eq!(found.server.name, "cp1");
        assert!(servers.by_token_sha256(&found.token_sha256).is_some());
        assert!(servers.authorize("secret").is_none());
        assert!(servers.authorize("").is_none());
        assert!(servers.by_token_sha256("00").is_none());
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
