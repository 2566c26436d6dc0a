//! Reading keys `prefix + BE u64` whose number lies in a range, with the store's prefix scans
//! only: the range is cut into aligned blocks, each the set of numbers that share their
//! leading bytes (as CIDR blocks cover an address range), and each block is one prefix scan.
//! Nothing outside the range is read, so a `Receive` that has already sent many entries not yet
//! acknowledged does not read them again to find the next one.

use p2pos_kernel::{Store, store::Pairs};

use crate::Error;

/// Up to `limit` pairs of `tree` whose key is `prefix` + a BE number in `lo..=hi`, in key
/// order.
pub(super) fn scan_numbered(
    store: &dyn Store,
    tree: &str,
    prefix: &[u8],
    lo: u64,
    hi: u64,
    limit: usize,
) -> Result<Pairs, Error> {
    let mut out = Vec::new();
    for block in blocks(lo, hi) {
        if out.len() >= limit {
            break;
        }
        let mut block_prefix = prefix.to_vec();
        block_prefix.extend_from_slice(&block);
        out.extend(store.scan_prefix(tree, &block_prefix, limit - out.len())?);
    }
    Ok(out)
}

/// The aligned blocks that together cover `lo..=hi` exactly, in ascending order, each given
/// as the leading BE bytes its numbers share (a block of 256^k numbers starting at a multiple of
/// 256^k shares its first 8 - k bytes). At most 2 × 255 blocks per byte of the range's width.
fn blocks(lo: u64, hi: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut next = (lo <= hi).then_some(lo);
    std::iter::from_fn(move || {
        let start = next?;
        // The largest aligned block that starts at `start` and ends by `hi`: 256^k numbers.
        let mut k = 0;
        while k < 8 {
            let mask = low_bytes_mask(k + 1);
            if start & mask != 0 || start | mask > hi {
                break;
            }
            k += 1;
        }
        let end = start | low_bytes_mask(k);
        next = end.checked_add(1).filter(|n| *n <= hi);
        Some(start.to_be_bytes()[..8 - k].to_vec())
    })
}

/// The `u64` whose lowest `k` bytes are all ones.
fn low_bytes_mask(k: usize) -> u64 {
    if k >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * k)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers a block stands for.
    fn span(block: &[u8]) -> (u64, u64) {
        let mut lo = [0u8; 8];
        let mut hi = [0xffu8; 8];
        lo[..block.len()].copy_from_slice(block);
        hi[..block.len()].copy_from_slice(block);
        (u64::from_be_bytes(lo), u64::from_be_bytes(hi))
    }

    fn check(lo: u64, hi: u64) {
        let mut at = lo;
        let mut count = 0;
        for block in blocks(lo, hi) {
            let (start, end) = span(&block);
            assert_eq!(
                start, at,
                "blocks of {lo}..={hi} are contiguous and ascending"
            );
            assert!(end <= hi, "block {block:?} ends after {hi}");
            count += 1;
            match end.checked_add(1) {
                Some(n) => at = n,
                None => {
                    assert_eq!(hi, u64::MAX);
                    return;
                }
            }
        }
        assert_eq!(
            at,
            hi.wrapping_add(1),
            "blocks of {lo}..={hi} reach its end"
        );
        assert!(count <= 2 * 255 * 8, "{count} blocks for {lo}..={hi}");
    }

    #[test]
    fn blocks_cover_exactly_the_range() {
        for (lo, hi) in [
            (0, 0),
            (0, 255),
            (1, 255),
            (250, 260),
            (255, 256),
            (0, 65_535),
            (300, 70_000),
            (1, u64::MAX),
            (0, u64::MAX),
            (u64::MAX, u64::MAX),
            (0x0100_0000_00ff_fffe, 0x0100_0001_0000_0003),
        ] {
            check(lo, hi);
        }
        assert_eq!(blocks(5, 4).count(), 0, "an empty range has no blocks");
        assert_eq!(
            blocks(0, u64::MAX).collect::<Vec<_>>(),
            vec![Vec::<u8>::new()]
        );
        assert_eq!(
            blocks(256, 511).collect::<Vec<_>>(),
            vec![vec![0, 0, 0, 0, 0, 0, 1]]
        );
    }

    #[test]
    fn close_numbers_take_few_scans() {
        // A cursor just behind the newest entry, as when a `Receive` keeps up.
        assert_eq!(blocks(1_000_001, 1_000_003).count(), 3);
        // A range under 256^3 wide: at most 2 × 255 blocks for each of its 3 low bytes.
        assert!(blocks(1_000_001, 1_100_000).count() <= 2 * 255 * 3);
    }
}
