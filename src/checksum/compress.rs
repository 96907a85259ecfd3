//! MD5's compression function (RFC 1321, 3.4), for one state and for two states over the same
//! 64-byte block.
//!
//! md5 is a chain of 64 dependent steps per block: one state keeps a core's adders mostly idle,
//! waiting on the step before. Two states over the same block are two independent chains, and the
//! core runs them side by side: on our machine two states cost about 1.2 times one (see
//! docs/PERFORMANCE.md).

/// The sines table, `K[i] = floor(abs(sin(i + 1)) * 2^32)`.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, //
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, //
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8, //
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, //
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, //
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, //
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1, //
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391, //
];

/// The 64 steps: for step `i`, which state word it updates (the others follow in turn), its round
/// function, the message word and the rotation.
macro_rules! md5_steps {
    ($step:ident) => {
        $step!(0, 1, 2, 3, f, 0, 7, 0);
        $step!(3, 0, 1, 2, f, 1, 12, 1);
        $step!(2, 3, 0, 1, f, 2, 17, 2);
        $step!(1, 2, 3, 0, f, 3, 22, 3);
        $step!(0, 1, 2, 3, f, 4, 7, 4);
        $step!(3, 0, 1, 2, f, 5, 12, 5);
        $step!(2, 3, 0, 1, f, 6, 17, 6);
        $step!(1, 2, 3, 0, f, 7, 22, 7);
        $step!(0, 1, 2, 3, f, 8, 7, 8);
        $step!(3, 0, 1, 2, f, 9, 12, 9);
        $step!(2, 3, 0, 1, f, 10, 17, 10);
        $step!(1, 2, 3, 0, f, 11, 22, 11);
        $step!(0, 1, 2, 3, f, 12, 7, 12);
        $step!(3, 0, 1, 2, f, 13, 12, 13);
        $step!(2, 3, 0, 1, f, 14, 17, 14);
        $step!(1, 2, 3, 0, f, 15, 22, 15);
        $step!(0, 1, 2, 3, g, 1, 5, 16);
        $step!(3, 0, 1, 2, g, 6, 9, 17);
        $step!(2, 3, 0, 1, g, 11, 14, 18);
        $step!(1, 2, 3, 0, g, 0, 20, 19);
        $step!(0, 1, 2, 3, g, 5, 5, 20);
        $step!(3, 0, 1, 2, g, 10, 9, 21);
        $step!(2, 3, 0, 1, g, 15, 14, 22);
        $step!(1, 2, 3, 0, g, 4, 20, 23);
        $step!(0, 1, 2, 3, g, 9, 5, 24);
        $step!(3, 0, 1, 2, g, 14, 9, 25);
        $step!(2, 3, 0, 1, g, 3, 14, 26);
        $step!(1, 2, 3, 0, g, 8, 20, 27);
        $step!(0, 1, 2, 3, g, 13, 5, 28);
        $step!(3, 0, 1, 2, g, 2, 9, 29);
        $step!(2, 3, 0, 1, g, 7, 14, 30);
        $step!(1, 2, 3, 0, g, 12, 20, 31);
        $step!(0, 1, 2, 3, h, 5, 4, 32);
        $step!(3, 0, 1, 2, h, 8, 11, 33);
        $step!(2, 3, 0, 1, h, 11, 16, 34);
        $step!(1, 2, 3, 0, h, 14, 23, 35);
        $step!(0, 1, 2, 3, h, 1, 4, 36);
        $step!(3, 0, 1, 2, h, 4, 11, 37);
        $step!(2, 3, 0, 1, h, 7, 16, 38);
        $step!(1, 2, 3, 0, h, 10, 23, 39);
        $step!(0, 1, 2, 3, h, 13, 4, 40);
        $step!(3, 0, 1, 2, h, 0, 11, 41);
        $step!(2, 3, 0, 1, h, 3, 16, 42);
        $step!(1, 2, 3, 0, h, 6, 23, 43);
        $step!(0, 1, 2, 3, h, 9, 4, 44);
        $step!(3, 0, 1, 2, h, 12, 11, 45);
        $step!(2, 3, 0, 1, h, 15, 16, 46);
        $step!(1, 2, 3, 0, h, 2, 23, 47);
        $step!(0, 1, 2, 3, i, 0, 6, 48);
        $step!(3, 0, 1, 2, i, 7, 10, 49);
        $step!(2, 3, 0, 1, i, 14, 15, 50);
        $step!(1, 2, 3, 0, i, 5, 21, 51);
        $step!(0, 1, 2, 3, i, 12, 6, 52);
        $step!(3, 0, 1, 2, i, 3, 10, 53);
        $step!(2, 3, 0, 1, i, 10, 15, 54);
        $step!(1, 2, 3, 0, i, 1, 21, 55);
        $step!(0, 1, 2, 3, i, 8, 6, 56);
        $step!(3, 0, 1, 2, i, 15, 10, 57);
        $step!(2, 3, 0, 1, i, 6, 15, 58);
        $step!(1, 2, 3, 0, i, 13, 21, 59);
        $step!(0, 1, 2, 3, i, 4, 6, 60);
        $step!(3, 0, 1, 2, i, 11, 10, 61);
        $step!(2, 3, 0, 1, i, 2, 15, 62);
        $step!(1, 2, 3, 0, i, 9, 21, 63);
    };
}

#[inline(always)]
fn f(b: u32, c: u32, d: u32) -> u32 {
    d ^ (b & (c ^ d))
}

#[inline(always)]
fn g(b: u32, c: u32, d: u32) -> u32 {
    // The two terms share no bit set, so `+` is `|`; an add lets the compiler fold the `c` term
    // into the sum before `b` is known.
    (b & d).wrapping_add(c & !d)
}

#[inline(always)]
fn h(b: u32, c: u32, d: u32) -> u32 {
    b ^ c ^ d
}

#[inline(always)]
fn i(b: u32, c: u32, d: u32) -> u32 {
    c ^ (b | !d)
}

/// `x`, unseen by the optimizer. Without it LLVM adds a step's constant last, after the round
/// function: one more add on the chain every step depends on (md5 about 20% slower here).
#[inline(always)]
fn opaque(x: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut x = x;
        // SAFETY: the assembly is empty (a comment naming the register); it reads and writes
        // nothing but `x`, which it leaves as it is.
        unsafe { std::arch::asm!("/* {0:e} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags)) };
        x
    }
    #[cfg(not(target_arch = "x86_64"))]
    x
}

fn message_words(block: &[u8; 64]) -> [u32; 16] {
    let mut words = [0u32; 16];
    for (word, bytes) in words.iter_mut().zip(block.as_chunks::<4>().0) {
        *word = u32::from_le_bytes(*bytes);
    }
    words
}

/// One block into one state.
pub fn compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let m = message_words(block);
    let mut s = *state;
    macro_rules! step {
        // G's `c` term is added before `b` is known: one operation off the chain (md5 +10% here).
        // Two states (below) run faster without it: there the adders, not the chain, are the limit.
        ($a:literal, $b:literal, $c:literal, $d:literal, g, $k:literal, $r:literal, $i:literal) => {
            let sum = opaque(s[$a].wrapping_add(m[$k].wrapping_add(K[$i])).wrapping_add(s[$c] & !s[$d]));
            s[$a] = s[$b].wrapping_add(sum.wrapping_add(s[$b] & s[$d]).rotate_left($r));
        };
        ($a:literal, $b:literal, $c:literal, $d:literal, $f:ident, $k:literal, $r:literal, $i:literal) => {
            let sum = opaque(s[$a].wrapping_add(m[$k].wrapping_add(K[$i])));
            s[$a] = s[$b].wrapping_add(sum.wrapping_add($f(s[$b], s[$c], s[$d])).rotate_left($r));
        };
    }
    md5_steps!(step);
    for (word, step_word) in state.iter_mut().zip(s) {
        *word = word.wrapping_add(step_word);
    }
}

/// One block into two states: the same as `compress` on each, in about 1.2 times the time of one.
pub fn compress_twice(first: &mut [u32; 4], second: &mut [u32; 4], block: &[u8; 64]) {
    let m = message_words(block);
    let (mut s, mut t) = (*first, *second);
    macro_rules! step {
        ($a:literal, $b:literal, $c:literal, $d:literal, $f:ident, $k:literal, $r:literal, $i:literal) => {
            let word = opaque(m[$k].wrapping_add(K[$i]));
            let (sum_s, sum_t) = (s[$a].wrapping_add(word), t[$a].wrapping_add(word));
            s[$a] = s[$b].wrapping_add(sum_s.wrapping_add($f(s[$b], s[$c], s[$d])).rotate_left($r));
            t[$a] = t[$b].wrapping_add(sum_t.wrapping_add($f(t[$b], t[$c], t[$d])).rotate_left($r));
        };
    }
    md5_steps!(step);
    for (word, step_word) in first.iter_mut().zip(s) {
        *word = word.wrapping_add(step_word);
    }
    for (word, step_word) in second.iter_mut().zip(t) {
        *word = word.wrapping_add(step_word);
    }
}
