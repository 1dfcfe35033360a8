//! `tracerctl trace -c`: per-syscall counts and time, in the shape of `strace -c`.
use std::collections::HashMap;

use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Row {
    calls: u64,
    errors: u64,
    nanos: u64,
}

/// Counts events as they arrive.
#[derive(Debug, Default)]
pub struct Summary {
    rows: HashMap<String, Row>,
}

impl Summary {
    pub fn add(&mut self, event: &Value) {
        let name = event["syscall"].as_str().unwrap_or("?").to_owned();
        let row = self.rows.entry(name).or_default();
        row.calls += 1;
        row.nanos += event["duration_ns"].as_u64().unwrap_or(0);
        if event["ret"]
            .as_i64()
            .is_some_and(|ret| (-4095..0).contains(&ret))
        {
            row.errors += 1;
        }
    }

    /// The table, most time first (then most calls, then name), as strace prints it.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&String, &Row)> = self.rows.iter().collect();
        rows.sort_by(|a, b| {
            b.1.nanos
                .cmp(&a.1.nanos)
                .then(b.1.calls.cmp(&a.1.calls))
                .then(a.0.cmp(b.0))
        });
        let total = rows.iter().fold(Row::default(), |total, (_, row)| Row {
            calls: total.calls + row.calls,
            errors: total.errors + row.errors,
            nanos: total.nanos + row.nanos,
        });
        let rule = "------ ----------- ----------- --------- --------- ----------------\n";
        let mut out = String::from("% time     seconds  usecs/call     calls    errors syscall\n");
        out.push_str(rule);
        for (name, row) in &rows {
            out.push_str(&line(row, total.nanos, name));
        }
        out.push_str(rule);
        out.push_str(&line(&total, total.nanos, "total"));
        out
    }
}

fn line(row: &Row, total_nanos: u64, name: &str) -> String {
    let percent = if total_nanos == 0 {
        if name == "total" {
            100.0
        } else {
            0.0
        }
    } else {
        row.nanos as f64 * 100.0 / total_nanos as f64
    };
    let usecs = row.nanos / 1000 / row.calls.max(1);
    let errors = if row.errors == 0 {
        String::new()
    } else {
        row.errors.to_string()
    };
    format!(
        "{percent:6.2} {:11.6} {usecs:11} {:9} {errors:>9} {name}\n",
        row.nanos as f64 / 1e9,
        row.calls,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_time_and_errors_like_strace_c() {
        let mut summary = Summary::default();
        for _ in 0..3 {
            summary.add(&json!({"syscall": "openat", "ret": -2, "duration_ns": 2000}));
        }
        summary.add(&json!({"syscall": "read", "ret": 5, "duration_ns": 1000}));
        assert_eq!(
            summary.table(),
            "% time     seconds  usecs/call     calls    errors syscall\n\
             ------ ----------- ----------- --------- --------- ----------------\n \
             85.71    0.000006           2         3         3 openat\n \
             14.29    0.000001           1         1           read\n\
             ------ ----------- ----------- --------- --------- ----------------\n\
             100.00    0.000007           1         4         3 total\n"
        );
    }
}
