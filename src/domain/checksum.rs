//! Checksums a tus or IETF client sends with a PATCH: tus's `Upload-Checksum` (`sha1 <base64>`)
//! and RFC 9530's `Content-Digest` (`sha-256=:<base64>:`). Both cover the request's content.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{FieldError, Md5Hex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumAlgorithm {
    /// What `Tus-Checksum-Algorithm` lists.
    pub const TUS: &'static str = "md5,sha1,sha256,sha512";

    fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Md5 => 16,
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Sha512 => 64,
        }
    }

    fn tus_name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tus_name())
    }
}

/// A checksum of a request's content, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

impl ContentChecksum {
    /// tus's `Upload-Checksum: <algorithm> <base64 digest>`.
    pub fn from_tus(header: &str) -> Result<Self, FieldError> {
        let field = "Upload-Checksum";
        let bad = |problem: &str| FieldError::new(field, problem).with_sent(header);
        let (name, encoded) = header.trim().split_once(' ').ok_or_else(|| bad("must be \"<algorithm> <base64>\""))?;
        let algorithm = match name {
            "md5" => ChecksumAlgorithm::Md5,
            "sha1" => ChecksumAlgorithm::Sha1,
            "sha256" => ChecksumAlgorithm::Sha256,
            "sha512" => ChecksumAlgorithm::Sha512,
            _ => {
                return Err(bad(&format!(
                    "names an algorithm this server lacks: use one of {}",
                    ChecksumAlgorithm::TUS
                )))
            }
        };
        Self::decoded(field, header, algorithm, encoded.trim())
    }

    /// RFC 9530's `Content-Digest: sha-256=:<base64>:` (a dictionary: the first member this
    /// server knows is taken; md5 and sha are deprecated there, and still accepted).
    pub fn from_content_digest(header: &str) -> Result<Self, FieldError> {
        Self::from_digest_field("Content-Digest", header, |_| true)?.ok_or_else(|| {
            FieldError::new("Content-Digest", "names no algorithm this server has: use sha-256, sha-512 or md5")
                .with_sent(header)
        })
    }

    /// RFC 9530's `Repr-Digest` of a whole upload: its md5 member, which fupload checks when the
    /// upload completes; `None` when there is none (fupload computes no other whole-file digest).
    pub fn md5_of_repr_digest(header: &str) -> Result<Option<Md5Hex>, FieldError> {
        let md5 = Self::from_digest_field("Repr-Digest", header, |a| a == ChecksumAlgorithm::Md5)?;
        Ok(md5.map(|checksum| Md5Hex::of_digest(&checksum.digest)))
    }

    /// The `Repr-Digest` naming a whole file's md5: `md5=:<base64>:`.
    pub fn repr_digest_of(md5: &Md5Hex) -> String {
        // An Md5Hex is 32 hex digits by construction.
        let digest = hex::decode(md5.as_str()).unwrap_or_default();
        format!("md5=:{}:", STANDARD.encode(digest))
    }

    fn from_digest_field(
        field: &'static str,
        header: &str,
        wanted: impl Fn(ChecksumAlgorithm) -> bool,
    ) -> Result<Option<Self>, FieldError> {
        for member in header.split(',') {
            let Some((name, value)) = member.trim().split_once('=') else { continue };
            let algorithm = match name.trim() {
                "sha-256" => ChecksumAlgorithm::Sha256,
                "sha-512" => ChecksumAlgorithm::Sha512,
                "md5" => ChecksumAlgorithm::Md5,
                "sha" => ChecksumAlgorithm::Sha1,
                _ => continue,
            };
            if !wanted(algorithm) {
                continue;
            }
            let encoded = value.trim().strip_prefix(':').and_then(|v| v.strip_suffix(':'));
            let encoded = encoded.ok_or_else(|| FieldError::new(field, "must hold :<base64>:").with_sent(header))?;
            return Self::decoded(field, header, algorithm, encoded).map(Some);
        }
        Ok(None)
    }

    fn decoded(
        field: &'static str,
        header: &str,
        algorithm: ChecksumAlgorithm,
        encoded: &str,
    ) -> Result<Self, FieldError> {
        let digest = STANDARD.decode(encoded).map_err(|_| FieldError::new(field, "is not base64").with_sent(header))?;
        if digest.len() != algorithm.digest_len() {
            return Err(FieldError::new(
                field,
                format!("holds {} bytes, a {algorithm} digest {}", digest.len(), algorithm.digest_len()),
            )
            .with_sent(header));
        }
        Ok(Self { algorithm, digest })
    }

    pub fn base64(&self) -> String {
        STANDARD.encode(&self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_and_rfc_9530_checksums_parse_and_bad_ones_say_why() {
        let sha1 = ContentChecksum::from_tus("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!((sha1.algorithm, sha1.digest.len()), (ChecksumAlgorithm::Sha1, 20));
        let digest =
            ContentChecksum::from_content_digest("crc32c=:x:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")
                .unwrap();
        assert_eq!(digest.algorithm, ChecksumAlgorithm::Sha256);
        let md5 = ContentChecksum::md5_of_repr_digest(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, md5=:1B2M2Y8AsgTpgAmY7PhCfg==:",
        );
        let md5 = md5.unwrap().unwrap();
        assert_eq!(md5.as_str(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(ContentChecksum::repr_digest_of(&md5), "md5=:1B2M2Y8AsgTpgAmY7PhCfg==:");
        assert_eq!(
            ContentChecksum::md5_of_repr_digest("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
            Ok(None)
        );
        assert!(ContentChecksum::from_content_digest("crc32c=:AAAA:").unwrap_err().to_string().contains("sha-256"));
        assert!(ContentChecksum::from_tus("crc32 AAAA").unwrap_err().to_string().contains("md5,sha1"));
        assert!(ContentChecksum::from_tus("sha1 AAAA").unwrap_err().to_string().contains("holds 3 bytes"));
        assert!(ContentChecksum::from_tus("sha1").is_err());
        assert!(ContentChecksum::from_content_digest("sha-256=abc").is_err());
    }
}
