//! userfaultfd fault engine of dsm: fixed-address regions, page install/protect/invalidate, fault delivery
