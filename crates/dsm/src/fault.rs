//! Serves userfaultfd faults through the coherence engine (thread delivery: the resolver runs
//! on the fault engine's worker thread, may take the coherence lock, and returns `Pending`;
//! the install that the engine's actions perform wakes the faulting thread).

use std::sync::Arc;

use dsm_core::Access;
use dsm_uffd::{Fault, FaultKind, FaultResolver, Region, Resolution};
use dsm_wire::PageId;

use crate::runtime::Core;
use crate::stats::Counters;

/// The resolver of one region.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) core: Arc<Core>,
    pub(crate) region: u32,
}

impl FaultResolver for Resolver {
    fn resolve(&self, fault: Fault, _region: &Region) -> Resolution {
        let counters = &self.core.shared.counters;
        let access = match fault.kind {
            FaultKind::Read => {
                Counters::bump(&counters.read_faults);
                Access::Read
            }
            FaultKind::Write | FaultKind::WriteProtect => {
                Counters::bump(&counters.write_faults);
                Access::Write
            }
        };
        if let Some(rank) = self.core.shared.read(|s| s.failed.first().copied()) {
            eprintln!(
                "dsm: fault on page {} cannot be served: node {rank} failed",
                fault.page
            );
            return Resolution::Fail;
        }
        let page = PageId {
            region: self.region,
            page: fault.page,
        };
        match self.core.engine(|c, ctx| c.fault(page, access, ctx)) {
            Ok(()) => Resolution::Pending,
            Err(e) => {
                eprintln!("dsm: fault on {page:?} failed: {e}");
                Resolution::Fail
            }
        }
    }
}
