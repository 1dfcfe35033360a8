//! Per-cgroup record counts: what the daemon has received from the kernel, by cgroup and by
//! syscall. Logged periodically and served on `/v1/tally`; the first consumer of records.
use std::collections::BTreeMap;

use serde::Serialize;
use tracer_common::SyscallRecord;

use crate::record::syscalls::syscall_name;

/// Records received per cgroup id and syscall number.
#[derive(Clone, Debug, Default)]
pub struct CgroupTally {
    by_cgroup: BTreeMap<u64, BTreeMap<u32, u64>>,
}

/// One cgroup's counts, keyed by syscall name (or `nr:<n>` for numbers the table lacks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupCounts {
    pub cgroup_id: u64,
    pub total: u64,
    pub syscalls: BTreeMap<String, u64>,
}

impl CgroupTally {
    pub fn add(&mut self, record: &SyscallRecord) {
        *self
            .by_cgroup
            .entry(record.cgroup_id)
            .or_default()
            .entry(record.nr)
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<CgroupCounts> {
        self.by_cgroup
            .iter()
            .map(|(&cgroup_id, by_nr)| CgroupCounts {
                cgroup_id,
                total: by_nr.values().sum(),
                syscalls: by_nr
                    .iter()
                    .map(|(&nr, &count)| {
                        let name =
                            syscall_name(nr).map_or_else(|| format!("nr:{nr}"), str::to_owned);
                        (name, count)
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::COMM_LEN;

    use super::*;

    fn record(cgroup_id: u64, nr: u32) -> SyscallRecord {
        SyscallRecord {
            enter_ns: 0,
            duration_ns: 0,
            cgroup_id,
            sessions: 1,
            args: [0; 6],
            ret: 0,
            tgid: 1,
            tid: 1,
            nr,
            data_len: 0,
            flags: 0,
            comm: [0; COMM_LEN],
        }
    }

    #[test]
    fn counts_by_cgroup_and_syscall_name() {
        let getppid = syscalls::Sysno::getppid.id() as u32;
        let mut tally = CgroupTally::default();
        for _ in 0..3 {
            tally.add(&record(7, getppid));
        }
        tally.add(&record(9, 100_000));
        let snapshot = tally.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].cgroup_id, 7);
        assert_eq!(snapshot[0].total, 3);
        assert_eq!(snapshot[0].syscalls["getppid"], 3);
        assert_eq!(snapshot[1].syscalls["nr:100000"], 1);
    }
}
