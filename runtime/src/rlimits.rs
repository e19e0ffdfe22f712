//! rlimits for the payload (nofile, core=0, fsize, ...), applied in the child before the
//! uid switch so hard limits can be lowered and raised within the runtime's own limits.

use crate::process::message::{Step, StepError};
use crate::spec::Rlimit;
use crate::syscall::Syscall;

/// Apply every limit, in order.
pub fn apply(sys: &dyn Syscall, limits: &[Rlimit]) -> Result<(), StepError> {
    for limit in limits {
        sys.setrlimit(limit.resource.raw(), limit.soft, limit.hard)
            .map_err(|e| StepError::new(Step::Rlimits, e, None))?;
    }
    Ok(())
}

/// `(resource, soft, hard)` triples for a `JoinPlan`.
pub fn as_triples(limits: &[Rlimit]) -> Vec<(u32, u64, u64)> {
    limits
        .iter()
        .map(|l| (l.resource.raw(), l.soft, l.hard))
        .collect()
}
