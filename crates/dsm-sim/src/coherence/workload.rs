//! What the simulated threads do: random reads and writes, and (release mode) which node may
//! touch which word in each barrier phase so that the program is data-race free.

use dsm_wire::NodeId;

use crate::rng::Rng;

/// One memory access of a simulated thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Load word `word` of page `page` and check it.
    Read {
        /// Page index in region 0.
        page: u32,
        /// Word index (8 bytes each).
        word: usize,
    },
    /// Store `value` at word `word` of page `page`.
    Write {
        /// Page index in region 0.
        page: u32,
        /// Word index.
        word: usize,
        /// A value never written before.
        value: u64,
    },
}

impl Op {
    /// The page touched.
    pub fn page(self) -> u32 {
        match self {
            Op::Read { page, .. } | Op::Write { page, .. } => page,
        }
    }
}

/// Sequential mode: any node touches anything; page 0 is hot so races are frequent.
pub fn random_op(rng: &mut Rng, pages: u32, words: usize, value: u64) -> Op {
    let page = if rng.chance(1, 2) {
        0
    } else {
        u32::try_from(rng.below(u64::from(pages))).expect("page index fits")
    };
    let word = rng.index(words);
    if rng.chance(1, 2) {
        Op::Read { page, word }
    } else {
        Op::Write { page, word, value }
    }
}

/// Release mode: the node allowed to write `word` of `page` in barrier phase `phase`, or `None`
/// when nobody writes it (everyone may read it). A pure function of its inputs, so every node
/// agrees without messages.
pub fn owner(seed: u64, phase: u64, page: u32, word: usize, nodes: u32) -> Option<NodeId> {
    let key = seed ^ phase.wrapping_mul(0x9e37_79b9) ^ (u64::from(page) << 40) ^ (word as u64);
    let mut rng = Rng::new(key);
    if rng.chance(1, 4) {
        return None;
    }
    Some(u32::try_from(rng.below(u64::from(nodes))).expect("node fits"))
}

/// Release mode: a data-race-free access for `node` in `phase`: a write or read of a word it
/// owns, or a read of a word nobody writes. `None` if a few draws found nothing (the op is
/// skipped).
#[allow(clippy::too_many_arguments)]
pub fn drf_op(
    rng: &mut Rng,
    seed: u64,
    phase: u64,
    node: NodeId,
    nodes: u32,
    pages: u32,
    words: usize,
    value: u64,
) -> Option<Op> {
    for _ in 0..16 {
        let page = u32::try_from(rng.below(u64::from(pages))).expect("page index fits");
        let word = rng.index(words);
        match owner(seed, phase, page, word, nodes) {
            Some(o) if o == node && rng.chance(2, 3) => {
                return Some(Op::Write { page, word, value });
            }
            Some(o) if o != node => continue,
            _ => return Some(Op::Read { page, word }),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{drf_op, owner};
    use crate::rng::Rng;

    #[test]
    fn drf_ops_never_touch_words_others_write() {
        let mut rng = Rng::new(3);
        for phase in 0..50 {
            for node in 0..4 {
                let Some(op) = drf_op(&mut rng, 9, phase, node, 4, 3, 16, 1) else {
                    continue;
                };
                let (page, word) = match op {
                    super::Op::Read { page, word } | super::Op::Write { page, word, .. } => {
                        (page, word)
                    }
                };
                let who = owner(9, phase, page, word, 4);
                assert!(who.is_none() || who == Some(node), "{op:?} by {node}");
                if matches!(op, super::Op::Write { .. }) {
                    assert_eq!(who, Some(node));
                }
            }
        }
    }
}
