//! MD5, computed by OpenSSL. md5 over every byte twice (each block's `partMd5`, and the whole
//! file) is most of the CPU an upload costs; OpenSSL's assembly is 10–20% faster on our machines
//! than md-5's (see docs/PERFORMANCE.md).

use openssl::hash::{Hasher, MessageDigest};

use crate::domain::Md5Hex;

/// An md5 in progress.
#[derive(Clone)]
pub struct Md5(Hasher);

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5(..)")
    }
}

// OpenSSL reports errors from these calls only when MD5 is not available at all (a FIPS-only
// build); `check_available` refuses to start the server in that case, so they cannot fail here.
const AVAILABLE: &str = "OpenSSL's MD5 was checked at start-up";

impl Md5 {
    /// Fails when this OpenSSL offers no MD5 (FIPS mode).
    pub fn check_available() -> Result<(), openssl::error::ErrorStack> {
        Hasher::new(MessageDigest::md5()).map(drop)
    }

    pub fn new() -> Self {
        Md5(Hasher::new(MessageDigest::md5()).expect(AVAILABLE))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data).expect(AVAILABLE);
    }

    pub fn finish(mut self) -> Md5Hex {
        Md5Hex::of_digest(&self.0.finish().expect(AVAILABLE))
    }

    pub fn digest(data: &[u8]) -> Md5Hex {
        let mut md5 = Md5::new();
        md5.update(data);
        md5.finish()
    }
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_1321_test_suite() {
        assert_eq!(Md5::digest(b"").as_str(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(Md5::digest(b"abc").as_str(), "900150983cd24fb0d6963f7d28e17f72");
        let mut split = Md5::new();
        split.update(b"message ");
        let copy = split.clone();
        split.update(b"digest");
        assert_eq!(split.finish().as_str(), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(copy.finish(), Md5::digest(b"message "));
    }
}
