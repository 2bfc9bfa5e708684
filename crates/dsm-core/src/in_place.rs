//! Publishing a home's own writes in place: the bytes where this node's copy differs from its
//! twin go straight into the master copy (no diff message, no write-protection).
//!
//! Exactly the bytes this node changed are written, and no others: writes of other nodes
//! that reached the master meanwhile (their diffs, to other bytes of a falsely shared page)
//! stay, also when a same-host node merges its diff into the same master concurrently, from
//! its own process ([`Action::MergeMaster`](crate::Action::MergeMaster)). So the master is
//! never read and written back whole: unchanged bytes are not stored at all. The copy is read
//! once, as a snapshot taken while the page stays writable: a byte another local thread
//! changes after the snapshot still differs from the refreshed twin (the snapshot) and goes
//! out at the next release, so no write is lost.

use dsm_wire::PAGE_SIZE;

/// Stores into `master` every byte where `current` differs from `twin`, and only those;
/// returns whether any did. Word by word: an unchanged word costs a compare, a word changed
/// in all eight bytes one store; only a partly changed word is stored byte by byte.
pub(crate) fn merge(
    twin: &[u8; PAGE_SIZE],
    current: &[u8; PAGE_SIZE],
    master: &mut [u8; PAGE_SIZE],
) -> bool {
    if twin == current {
        return false;
    }
    let words = twin.chunks_exact(8).zip(current.chunks_exact(8));
    for (i, (t, c)) in words.enumerate() {
        let (t, c) = (word(t), word(c));
        if t == c {
            continue;
        }
        let at = i * 8;
        if every_byte_differs(t ^ c) {
            store_word(&mut master[at..at + 8], c);
        } else {
            for (b, (tb, cb)) in t.to_ne_bytes().iter().zip(c.to_ne_bytes()).enumerate() {
                if *tb != cb {
                    store(&mut master[at + b..at + b + 1], &[cb]);
                }
            }
        }
    }
    true
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes.try_into().expect("chunks of 8"))
}

/// Whether no byte of `x` is zero (the classic has-zero-byte test, negated).
fn every_byte_differs(x: u64) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    x.wrapping_sub(LOW) & !x & HIGH == 0
}

/// Writes `value` over the 8 bytes of `to`: one volatile store where `to` is aligned for it
/// (a master page is), else byte by byte.
fn store_word(to: &mut [u8], value: u64) {
    let at = to.as_mut_ptr();
    if at.align_offset(std::mem::align_of::<u64>()) == 0 && to.len() == 8 {
        // SAFETY: 8 writable bytes of the slice, aligned for a `u64` (checked).
        unsafe { std::ptr::write_volatile(at.cast::<u64>(), value) };
    } else {
        store(to, &value.to_ne_bytes());
    }
}

/// Writes `bytes` over `to` with volatile stores: the master may be mapped by other processes
/// that store to its other bytes meanwhile, so the compiler must not widen these stores into
/// a read and a write-back of bytes around them (which `&mut` would otherwise allow).
fn store(to: &mut [u8], bytes: &[u8]) {
    for (dst, src) in to.iter_mut().zip(bytes) {
        // SAFETY: `dst` is a valid, aligned `u8` of the slice.
        unsafe { std::ptr::write_volatile(dst, *src) };
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use dsm_wire::PAGE_SIZE;

    #[test]
    fn only_changed_bytes_reach_the_master() {
        let twin = [1u8; PAGE_SIZE];
        let mut current = twin;
        let mut master = [9u8; PAGE_SIZE]; // another writer's bytes everywhere
        assert!(!merge(&twin, &current, &mut master));
        assert_eq!(master, [9u8; PAGE_SIZE], "an unchanged page writes nothing");
        current[5] = 7;
        current[PAGE_SIZE - 1] = 0;
        assert!(merge(&twin, &current, &mut master));
        assert_eq!((master[4], master[5], master[6]), (9, 7, 9));
        assert_eq!(master[PAGE_SIZE - 1], 0);
        assert_eq!(master.iter().filter(|b| **b == 9).count(), PAGE_SIZE - 2);
    }

    #[test]
    fn whole_and_partly_changed_words_store_exactly_their_changed_bytes() {
        let twin = [0u8; PAGE_SIZE];
        let mut current = twin;
        current[8..16].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // a whole word
        current[17] = 0xaa; // one byte of the next
        current[22] = 0xbb;
        current[PAGE_SIZE - 8..].fill(0xcc);
        let mut master = [9u8; PAGE_SIZE];
        assert!(merge(&twin, &current, &mut master));
        assert_eq!(&master[..8], &[9; 8], "unchanged word untouched");
        assert_eq!(&master[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&master[16..24], &[9, 0xaa, 9, 9, 9, 9, 0xbb, 9]);
        assert_eq!(&master[PAGE_SIZE - 8..], &[0xcc; 8]);
        let changed = master.iter().filter(|b| **b != 9).count();
        assert_eq!(changed, 8 + 2 + 8, "nothing else written");
    }
}
