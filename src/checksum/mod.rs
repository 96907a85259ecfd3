//! MD5 (RFC 1321), our own rather than a library's, for one thing no library here offers: hashing
//! the same bytes into two states at once (`update_both`) for about 1.2 times the cost of one. A
//! block that continues a task's received prefix is hashed for its `partMd5` and for the whole
//! file as it streams in, and never read back (see docs/PERFORMANCE.md). One state alone is as
//! fast as OpenSSL's assembly on our machines.

mod compress;

use crate::domain::Md5Hex;

/// An md5 in progress.
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    /// Bytes hashed so far; the last `len % 64` of them wait in `pending` for a whole block.
    len: u64,
    pending: [u8; 64],
}

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Md5({} bytes)", self.len)
    }
}

impl Md5 {
    pub fn new() -> Self {
        Md5 { state: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476], len: 0, pending: [0; 64] }
    }

    /// Bytes hashed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.len
    }

    fn pending_len(&self) -> usize {
        (self.len % 64) as usize
    }

    /// Whether the two went over the same bytes (their digests would be equal).
    fn same_as(&self, other: &Md5) -> bool {
        let pending = self.pending_len();
        self.state == other.state && self.len == other.len && self.pending[..pending] == other.pending[..pending]
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let pending = self.pending_len();
        if pending > 0 {
            let take = (64 - pending).min(data.len());
            self.pending[pending..pending + take].copy_from_slice(&data[..take]);
            self.len += take as u64;
            data = &data[take..];
            if pending + take < 64 {
                return;
            }
            compress::compress(&mut self.state, &self.pending);
        }
        let (blocks, rest) = data.as_chunks::<64>();
        for block in blocks {
            compress::compress(&mut self.state, block);
        }
        self.pending[..rest.len()].copy_from_slice(rest);
        self.len += data.len() as u64;
    }

    pub fn finish(mut self) -> Md5Hex {
        let bit_len = self.len.wrapping_mul(8).to_le_bytes();
        // 0x80, then zeros up to 56 bytes past a block boundary, then the length in bits.
        let mut padding = [0u8; 64];
        padding[0] = 0x80;
        self.update(&padding[..(119 - self.pending_len()) % 64 + 1]);
        self.update(&bit_len);
        let mut digest = [0u8; 16];
        for (bytes, word) in digest.as_chunks_mut::<4>().0.iter_mut().zip(self.state) {
            *bytes = word.to_le_bytes();
        }
        Md5Hex::of_digest(&digest)
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

/// `first.update(data); second.update(data)`, in one pass: whole blocks go through both states at
/// once when the two have as many bytes pending (their block boundaries line up in `data`, as for
/// a block's md5 and the whole file's when the block starts at a multiple of 64). Two equal states
/// (a block that starts the file) are hashed once.
pub fn update_both(first: &mut Md5, second: &mut Md5, data: &[u8]) {
    if first.same_as(second) {
        first.update(data);
        second.clone_from(first);
        return;
    }
    if first.pending_len() != second.pending_len() {
        first.update(data);
        second.update(data);
        return;
    }
    let (head, rest) = data.split_at(((64 - first.pending_len()) % 64).min(data.len()));
    first.update(head);
    second.update(head);
    let (blocks, tail) = rest.as_chunks::<64>();
    for block in blocks {
        compress::compress_twice(&mut first.state, &mut second.state, block);
    }
    let whole = (blocks.len() * 64) as u64;
    first.len += whole;
    second.len += whole;
    first.update(tail);
    second.update(tail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn oracle(data: &[u8]) -> Md5Hex {
        use md5::Digest;
        Md5Hex::of_digest(&md5::Md5::digest(data))
    }

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
    fn every_length_around_the_padding_boundaries_matches_an_independent_md5() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 % 256) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(Md5::digest(&data[..len]), oracle(&data[..len]), "length {len}");
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

    #[test]
    fn update_both_over_two_equal_states_leaves_them_equal() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 256) as u8).collect();
        let (mut first, mut second) = (Md5::new(), Md5::new());
        first.update(b"abc");
        second.update(b"abc");
        update_both(&mut first, &mut second, &data);
        let whole = Md5::digest(&[b"abc".as_slice(), &data].concat());
        assert_eq!((first.finish(), second.finish()), (whole.clone(), whole));
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
            prop_assert_eq!(md5.finish(), oracle(&data));
        }

        #[test]
        fn update_both_is_two_updates(
            head_blocks in 0usize..3,
            misalignment in prop_oneof![Just(0usize), 1usize..64],
            data in proptest::collection::vec(any::<u8>(), 0..1000),
            cut in 0usize..1000,
        ) {
            // `second` goes on from a head: in step with `first` when the head is whole blocks.
            let head: Vec<u8> = (0..head_blocks * 64 + misalignment).map(|i| (i * 7) as u8).collect();
            let (mut first, mut second) = (Md5::new(), Md5::new());
            second.update(&head);
            let cut = cut.min(data.len());
            update_both(&mut first, &mut second, &data[..cut]);
            update_both(&mut first, &mut second, &data[cut..]);
            prop_assert_eq!(first.finish(), oracle(&data));
            prop_assert_eq!(second.finish(), oracle(&[head, data].concat()));
        }
    }
}
