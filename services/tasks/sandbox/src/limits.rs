//! The memory limit: a `ResourceLimiter` that refuses any growth of the job's linear memories
//! and tables past their joint cap, and remembers the refusal and the peak.

use wasmtime::ResourceLimiter;

use crate::spec::TABLE_ELEMENT_BYTES;

/// Most instances, memories and tables a job may create (a component creates a few of each).
const MAX_INSTANCES: usize = 100;

/// Tracks the job's memories and tables against one cap.
#[derive(Debug)]
pub(crate) struct Limiter {
    cap: u64,
    memory: u64,
    tables: u64,
    peak_memory: u64,
    refused: Option<String>,
}

impl Limiter {
    /// A limiter allowing `cap` bytes of memories and tables together.
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap,
            memory: 0,
            tables: 0,
            peak_memory: 0,
            refused: None,
        }
    }

    /// The largest total linear memory seen, in bytes.
    pub(crate) fn peak_memory(&self) -> u64 {
        self.peak_memory
    }

    /// What was refused first, if anything was.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    fn refuse(&mut self, what: &str) {
        if self.refused.is_none() {
            self.refused = Some(format!(
                "memory limit {} reached: {what} was refused",
                human(self.cap)
            ));
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = (desired as u64).saturating_sub(current as u64);
        let total = self
            .memory
            .saturating_add(growth)
            .saturating_add(self.tables);
        if total > self.cap {
            self.refuse(if current == 0 {
                "a memory of the initial size"
            } else {
                "a memory.grow"
            });
            return Ok(false);
        }
        self.memory += growth;
        self.peak_memory = self.peak_memory.max(self.memory);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = (desired as u64)
            .saturating_sub(current as u64)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        let total = self
            .tables
            .saturating_add(growth)
            .saturating_add(self.memory);
        if total > self.cap {
            self.refuse(if current == 0 {
                "a table of the initial size"
            } else {
                "a table.grow"
            });
            return Ok(false);
        }
        self.tables += growth;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_INSTANCES
    }
}

/// `bytes` for people: whole MiB or KiB when exact, else bytes.
pub(crate) fn human(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_cap_and_tracks_the_peak() {
        let mut limiter = Limiter::new(2 * 65536);
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(limiter.memory_growing(65536, 2 * 65536, None).unwrap());
        assert!(!limiter.memory_growing(2 * 65536, 3 * 65536, None).unwrap());
        assert_eq!(limiter.peak_memory(), 2 * 65536);
        assert_eq!(
            limiter.refused(),
            Some("memory limit 128 KiB reached: a memory.grow was refused")
        );
        assert!(!limiter.table_growing(0, 1, None).unwrap());
    }
}
