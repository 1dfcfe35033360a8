//! How the CLI shows things: events as strace-like lines, tables that fit the terminal,
//! colour only on a terminal.
use std::io::IsTerminal as _;

use serde_json::Value;

/// Whether standard output is a terminal (colour and widths are for people, not pipes).
pub fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The terminal's width in columns, if standard output is one.
pub fn terminal_width() -> Option<usize> {
    if !is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills a winsize; a zeroed one is valid input.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    (ok && size.ws_col > 0).then_some(size.ws_col as usize)
}

/// One event as strace prints it with a time, who made it, and the time spent:
/// `12:01:02.123456 web 1234 openat(AT_FDCWD, "/etc/hosts", O_RDONLY) = 3 <0.000012>`.
/// Times are UTC. Without a decoded `strace` field (an older daemon), the raw values show.
pub fn event_line(event: &Value, colour: bool) -> String {
    let time = event["ts"]
        .as_str()
        .and_then(|ts| ts.split('T').nth(1))
        .map(|clock| {
            // HH:MM:SS.nnnnnnnnnZ → HH:MM:SS.uuuuuu
            let clock = clock.trim_end_matches('Z');
            match clock.split_once('.') {
                Some((seconds, fraction)) => format!("{seconds}.{:0<6.6}", fraction),
                None => clock.to_owned(),
            }
        })
        .unwrap_or_default();
    let process = event["container"]["name"]
        .as_str()
        .or_else(|| event["comm"].as_str())
        .unwrap_or("?");
    // A cluster session's events say which node they come from.
    let who = match event["node"].as_str() {
        Some(node) => format!("{node}/{process}"),
        None => process.to_owned(),
    };
    let call = event["strace"].as_str().map_or_else(
        || {
            format!(
                "{}({}) = {}",
                event["syscall"].as_str().unwrap_or("?"),
                event["args"]
                    .as_array()
                    .map(|args| args
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                event["ret"]
            )
        },
        str::to_owned,
    );
    let duration = event["duration_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
    let failed = event["ret"]
        .as_i64()
        .is_some_and(|ret| (-4095..0).contains(&ret));
    let call = if colour && failed {
        format!("\x1b[31m{call}\x1b[0m")
    } else {
        call
    };
    format!("{time} {who} {} {call} <{duration:.6}>", event["pid"])
}

/// A table with a header row, columns padded to their widest cell; the last column is cut
/// to what fits `width`.
pub fn table(header: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate().take(columns) {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate().take(columns) {
            if index + 1 < columns {
                line.push_str(&format!("{cell:<width$}  ", width = widths[index]));
            } else {
                line.push_str(cell);
            }
        }
        if let Some(width) = width {
            if line.chars().count() > width {
                line = line
                    .chars()
                    .take(width.saturating_sub(1))
                    .collect::<String>()
                    + "…";
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_reads_like_strace_with_time_and_process() {
        let event = json!({"ts": "2026-12-05T12:01:02.123456789Z", "pid": 1234, "comm": "cat",
            "container": {"name": "web"}, "syscall": "openat", "ret": 3, "duration_ns": 12000,
            "strace": "openat(AT_FDCWD, \"/etc/hosts\", O_RDONLY) = 3"});
        assert_eq!(
            event_line(&event, false),
            "12:01:02.123456 web 1234 openat(AT_FDCWD, \"/etc/hosts\", O_RDONLY) = 3 <0.000012>"
        );
        let failed = json!({"ts": "2026-12-05T12:01:02.5Z", "pid": 7, "comm": "sh",
            "syscall": "openat", "ret": -2, "duration_ns": 0, "args": [1, 2]});
        assert_eq!(
            event_line(&failed, false),
            "12:01:02.500000 sh 7 openat(1, 2) = -2 <0.000000>"
        );
        assert!(event_line(&failed, true).contains("\x1b[31m"));
        let mut on_node = event.clone();
        on_node["node"] = json!("b");
        assert!(event_line(&on_node, false).starts_with("12:01:02.123456 b/web 1234 openat"));
    }

    #[test]
    fn tables_align_and_fit() {
        let rows = vec![vec!["a".into(), "running".into(), "a long target".into()]];
        let text = table(&["ID", "STATUS", "TARGET"], &rows, None);
        assert_eq!(text, "ID  STATUS   TARGET\na   running  a long target\n");
        let narrow = table(&["ID", "STATUS", "TARGET"], &rows, Some(16));
        assert!(
            narrow.lines().all(|line| line.chars().count() <= 16),
            "{narrow}"
        );
    }
}
