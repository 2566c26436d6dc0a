//! Structure-aware damage: a valid encoding with bits flipped, bytes changed, cut, inserted or
//! removed, junk appended, or a length prefix rewritten to a length near a limit (so that a
//! frame announces 4 GiB and brings a few bytes, or one byte more than allowed).

use proptest::{collection::vec, prelude::*, sample::Index};

/// One change to an encoding; positions are taken modulo its length when applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    FlipBit(Index, u8),
    /// Sets one byte.
    SetByte(Index, u8),
    /// Cuts the bytes from here on.
    Truncate(Index),
    /// Inserts bytes here.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes from here.
    Remove(Index, usize),
    /// Appends bytes.
    Extend(Vec<u8>),
    /// Writes a 4-byte big-endian length at the start (the first frame's prefix).
    FirstLength(u32),
    /// Writes a 4-byte big-endian length here (another frame's prefix, or inside a body).
    Length(Index, u32),
}

/// Lengths that test a limit of `max` bytes: 0, around `max`, around 2³¹ and 4 GiB, any.
pub fn lengths(max: usize) -> impl Strategy<Value = u32> {
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    prop_oneof![
        Just(0),
        Just(1),
        Just(max.saturating_sub(1)),
        Just(max),
        Just(max.saturating_add(1)),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(u32::MAX - 3),
        0..=max.saturating_add(16),
        any::<u32>(),
    ]
}

/// One mutation, with lengths near `max`.
pub fn mutation(max: usize) -> impl Strategy<Value = Mutation> {
    let junk = || vec(any::<u8>(), 1..16);
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), junk()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => junk().prop_map(Mutation::Extend),
        2 => lengths(max).prop_map(Mutation::FirstLength),
        1 => (any::<Index>(), lengths(max)).prop_map(|(at, len)| Mutation::Length(at, len)),
    ]
}

/// Applies `m` to `bytes`.
pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::FlipBit(i, bit) => {
            if !bytes.is_empty() {
                let at = at(i, bytes.len());
                bytes[at] ^= 1 << (bit % 8);
            }
        }
        Mutation::SetByte(i, b) => {
            if !bytes.is_empty() {
                let at = at(i, bytes.len());
                bytes[at] = *b;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Mutation::Insert(i, junk) => {
            let at = at(i, bytes.len() + 1);
            bytes.splice(at..at, junk.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = at(i, bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Extend(junk) => bytes.extend_from_slice(junk),
        Mutation::FirstLength(len) => put_length(bytes, 0, *len),
        Mutation::Length(i, len) => {
            let at = at(i, bytes.len());
            put_length(bytes, at, *len);
        }
    }
}

/// Writes `len` big-endian at `at`, growing `bytes` if it is too short.
fn put_length(bytes: &mut Vec<u8>, at: usize, len: u32) {
    if bytes.len() < at + 4 {
        bytes.resize(at + 4, 0);
    }
    bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodings from `valid`, each with one to four mutations (lengths near `max`).
pub fn damaged<S>(valid: S, max: usize) -> impl Strategy<Value = Vec<u8>>
where
    S: Strategy<Value = Vec<u8>>,
{
    (valid, vec(mutation(max), 1..5)).prop_map(|(mut bytes, mutations)| {
        for m in &mutations {
            apply(&mut bytes, m);
        }
        bytes
    })
}

/// What a hostile or broken peer sends: any bytes, a valid encoding damaged, or a valid one.
pub fn inputs<S>(valid: S, max: usize) -> impl Strategy<Value = Vec<u8>>
where
    S: Strategy<Value = Vec<u8>> + Clone,
{
    prop_oneof![
        2 => vec(any::<u8>(), 0..512),
        5 => damaged(valid.clone(), max),
        1 => valid,
    ]
}

/// `body` as one frame: its length (4 bytes, big-endian), then it.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}
