//! MD5 by RustCrypto's md-5 (with its assembly where the target has it: the default `md5-asm`
//! feature), plus the count of bytes hashed that the prefix hasher goes by: a state over
//! `[0, bytes_hashed())` of a file is handed from the hasher to a block that starts there and back
//! (src/prefix_hash.rs). The state lives in memory only, so md-5's lack of a serialised form costs
//! nothing.

use md5::Digest;

use crate::domain::Md5Hex;

/// An md5 in progress.
#[derive(Clone, Default)]
pub struct Md5 {
    state: md5::Md5,
    bytes_hashed: u64,
}

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Md5({} bytes)", self.bytes_hashed)
    }
}

impl Md5 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed
    }

    pub fn update(&mut self, data: &[u8]) {
        self.state.update(data);
        self.bytes_hashed += data.len() as u64;
    }

    pub fn finish(self) -> Md5Hex {
        Md5Hex::of_digest(&self.state.finalize())
    }

    pub fn digest(data: &[u8]) -> Md5Hex {
        let mut md5 = Md5::new();
        md5.update(data);
        md5.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_the_rfc_1321_test_suite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (text, md5) in suite {
            assert_eq!(Md5::digest(text.as_bytes()).as_str(), md5, "md5 of {text:?}");
        }
    }

    #[test]
    fn a_clone_goes_on_from_where_it_was_taken() {
        let mut md5 = Md5::new();
        md5.update(b"message ");
        let copy = md5.clone();
        md5.update(b"digest");
        assert_eq!(md5.finish().as_str(), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(copy.bytes_hashed(), 8);
        assert_eq!(copy.finish(), Md5::digest(b"message "));
    }

    proptest! {
        #[test]
        fn pieces_of_any_sizes_hash_as_the_whole(data in proptest::collection::vec(any::<u8>(), 0..2000), cuts in proptest::collection::vec(0usize..2000, 0..8)) {
            let mut md5 = Md5::new();
            let mut from = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(data.len())).collect();
            cuts.sort_unstable();
            for cut in cuts.into_iter().chain([data.len()]) {
                md5.update(&data[from..cut]);
                from = cut;
            }
            prop_assert_eq!(md5.bytes_hashed(), data.len() as u64);
            prop_assert_eq!(md5.finish(), Md5::digest(&data));
        }
    }
}
