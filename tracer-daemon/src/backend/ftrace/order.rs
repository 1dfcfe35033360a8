//! A pass's events in time order. Each CPU's buffer holds its events in the order they were
//! written, so a pass's events are a few sorted runs, one per CPU: merged here, with no
//! allocation (a stable sort of a pass's thousands of events allocated a buffer of their
//! size every pass, memory the kernel zeroed again and again).
use std::ops::Range;

use super::decode::Raw;

/// One pass's events: pushed CPU by CPU, then taken in time order.
#[derive(Default)]
pub(super) struct PassEvents {
    events: Vec<(u64, Raw)>,
    /// Each CPU's events in `events`.
    runs: Vec<Range<usize>>,
}

impl PassEvents {
    /// Where the current CPU's events go.
    pub fn events(&mut self) -> &mut Vec<(u64, Raw)> {
        &mut self.events
    }

    /// Ends the current CPU's events.
    pub fn end_cpu(&mut self) {
        let start = self.runs.last().map_or(0, |run| run.end);
        if start < self.events.len() {
            self.runs.push(start..self.events.len());
        }
    }

    /// Hands every event to `handle` by timestamp; events with equal timestamps in the
    /// order they were pushed (as a stable sort would). Leaves nothing behind.
    pub fn take_in_order(&mut self, mut handle: impl FnMut(u64, Raw)) {
        self.end_cpu();
        let events = &mut self.events;
        for run in &self.runs {
            let run = &mut events[run.clone()];
            // The kernel writes each CPU's events in time order; should one not be, it is
            // sorted on its own (rare, so its allocation does not matter).
            if !run.is_sorted_by_key(|(ts, _)| *ts) {
                run.sort_by_key(|(ts, _)| *ts);
            }
        }
        let runs = &mut self.runs;
        // By (timestamp, run): the run whose next event comes first, and the next one after
        // it; events are taken from the first run until the second's turn comes.
        let head = |runs: &[Range<usize>], index: usize| (events[runs[index].start].0, index);
        loop {
            let mut first = None;
            let mut second = None;
            for index in (0..runs.len()).filter(|&index| !runs[index].is_empty()) {
                let key = head(runs, index);
                if first.is_none_or(|first| key < first) {
                    second = first;
                    first = Some(key);
                } else if second.is_none_or(|second| key < second) {
                    second = Some(key);
                }
            }
            let Some((_, index)) = first else { break };
            let run = &mut runs[index];
            while run.start < run.end {
                let (ts, raw) = events[run.start];
                if second.is_some_and(|second| (ts, index) > second) {
                    break;
                }
                handle(ts, raw);
                run.start += 1;
            }
        }
        events.clear();
        runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tid: u32) -> Raw {
        Raw::ProcessExit { tid }
    }

    fn ordered(cpus: &[&[(u64, u32)]]) -> Vec<(u64, u32)> {
        let mut pass = PassEvents::default();
        for cpu in cpus {
            for &(ts, tid) in *cpu {
                pass.events().push((ts, event(tid)));
            }
            pass.end_cpu();
        }
        let mut out = Vec::new();
        pass.take_in_order(|ts, raw| match raw {
            Raw::ProcessExit { tid } => out.push((ts, tid)),
            _ => unreachable!(),
        });
        assert!(pass.events.is_empty() && pass.runs.is_empty());
        out
    }

    /// What a stable sort of the events, CPU after CPU, gives.
    fn sorted(cpus: &[&[(u64, u32)]]) -> Vec<(u64, u32)> {
        let mut all: Vec<(u64, u32)> = cpus.iter().flat_map(|cpu| cpu.iter().copied()).collect();
        all.sort_by_key(|(ts, _)| *ts);
        all
    }

    #[test]
    fn runs_merge_as_a_stable_sort_orders_them() {
        let cases: [&[&[(u64, u32)]]; 6] = [
            &[],
            &[&[(1, 1), (2, 2), (3, 3)]],
            &[&[(1, 1), (5, 2), (9, 3)], &[(2, 4), (5, 5), (6, 6)]],
            // Ties across CPUs: the earlier CPU's first; within one, pushed order.
            &[&[(5, 1), (5, 2)], &[(5, 3)], &[(4, 4), (5, 5)]],
            // An empty CPU between busy ones, and one out of order.
            &[&[(3, 1)], &[], &[(9, 2), (1, 3), (4, 4)], &[(2, 5), (8, 6)]],
            &[
                &[(10, 1), (20, 2), (30, 3)],
                &[(1, 4), (2, 5)],
                &[(15, 6), (40, 7)],
            ],
        ];
        for cpus in cases {
            assert_eq!(ordered(cpus), sorted(cpus), "{cpus:?}");
        }
    }

    #[test]
    fn many_interleaved_runs_merge_in_order() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut cpus: Vec<Vec<(u64, u32)>> = Vec::new();
        let mut tid = 0;
        for _ in 0..8 {
            let mut ts = 0;
            let mut cpu = Vec::new();
            for _ in 0..200 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ts += state % 4;
                tid += 1;
                cpu.push((ts, tid));
            }
            cpus.push(cpu);
        }
        let cpus: Vec<&[(u64, u32)]> = cpus.iter().map(Vec::as_slice).collect();
        assert_eq!(ordered(&cpus), sorted(&cpus));
    }
}
