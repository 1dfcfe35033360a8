//! A session's `capture` settings: what argument data the kernel reads for it, and how much.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::field::{invalid, InvalidField};
use crate::record::{decode::Limits, CaptureSettings};

/// Syscalls with a data buffer to capture.
pub const DATA_SYSCALLS: &[&str] = &["read", "pread64", "recvfrom", "write", "pwrite64", "sendto"];

/// The `capture` object of a create request; every field has a default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Read argument data in the kernel (strings, buffers, socket addresses, argv); `false`
    /// records registers only. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Characters kept of each string argument (paths, names): 1 to 255, default 255.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole::option"
    )]
    pub string_chars: Option<u32>,
    /// Bytes kept of each buffer (`read`, `write`…) and characters of each argv element, like
    /// strace's `-s`: 0 (no buffers) to 1024, default 32.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole::option"
    )]
    pub data_bytes: Option<u32>,
    /// argv elements kept: 0 to 64, default 32.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole::option"
    )]
    pub argv: Option<u32>,
    /// Capture buffers of these syscalls only (of `read`, `pread64`, `recvfrom`, `write`,
    /// `pwrite64`, `sendto`); absent for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_syscalls: Option<Vec<String>>,
}

const STRING_CHARS: std::ops::RangeInclusive<u32> = 1..=tracer_common::PATH_MAX_LEN as u32 - 1;
const DATA_BYTES: std::ops::RangeInclusive<u32> = 0..=tracer_common::MAX_DATA_BYTES;
const ARGV: std::ops::RangeInclusive<u32> = 0..=tracer_common::MAX_ARGV;

/// Each numeric `capture` field and its (min, max), for the OpenAPI document.
pub fn capture_bounds() -> [(&'static str, (u32, u32)); 3] {
    let bounds = |range: std::ops::RangeInclusive<u32>| (*range.start(), *range.end());
    [
        ("string_chars", bounds(STRING_CHARS)),
        ("data_bytes", bounds(DATA_BYTES)),
        ("argv", bounds(ARGV)),
    ]
}

impl Capture {
    pub fn validate(&self) -> Result<CaptureSettings, InvalidField> {
        let defaults = Limits::default();
        let bounded = |field, value: Option<u32>, range: std::ops::RangeInclusive<u32>, default| {
            let value = value.unwrap_or(default);
            if range.contains(&value) {
                Ok(value as usize)
            } else {
                Err(invalid(
                    field,
                    format!("must be from {} to {}", range.start(), range.end()),
                ))
            }
        };
        let limits = Limits {
            string_chars: bounded(
                "capture.string_chars",
                self.string_chars,
                STRING_CHARS,
                defaults.string_chars as u32,
            )?,
            data_bytes: bounded(
                "capture.data_bytes",
                self.data_bytes,
                DATA_BYTES,
                defaults.data_bytes as u32,
            )?,
            argv: bounded("capture.argv", self.argv, ARGV, defaults.argv as u32)?,
        };
        let data_syscalls = match &self.data_syscalls {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| data_syscall(name))
                    .collect::<Result<Vec<u32>, _>>()?,
            ),
        };
        Ok(CaptureSettings {
            enabled: self.enabled.unwrap_or(true),
            limits,
            data_syscalls,
        })
    }
}

fn data_syscall(name: &str) -> Result<u32, InvalidField> {
    let unknown = || {
        invalid(
            "capture.data_syscalls",
            format!(
                "`{name}` has no data buffer to capture; choose from {}",
                DATA_SYSCALLS.join(", ")
            ),
        )
    };
    if !DATA_SYSCALLS.contains(&name) {
        return Err(unknown());
    }
    let sysno: syscalls::Sysno = name.parse().map_err(|_| unknown())?;
    Ok(sysno.id() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_stracelike_and_bounds_name_the_field() {
        let settings = Capture::default().validate().unwrap();
        assert_eq!(settings, CaptureSettings::default());
        assert_eq!(settings.limits.data_bytes, 32);
        let off = Capture {
            enabled: Some(false),
            ..Capture::default()
        };
        assert!(!off.validate().unwrap().enabled);
        let too_big = Capture {
            data_bytes: Some(4096),
            ..Capture::default()
        };
        assert_eq!(too_big.validate().unwrap_err().field, "capture.data_bytes");
        let too_long = Capture {
            string_chars: Some(256),
            ..Capture::default()
        };
        assert_eq!(
            too_long.validate().unwrap_err().field,
            "capture.string_chars"
        );
        let not_data = Capture {
            data_syscalls: Some(vec!["write".into(), "openat".into()]),
            ..Capture::default()
        };
        let err = not_data.validate().unwrap_err();
        assert_eq!(err.field, "capture.data_syscalls");
        assert!(err.message.contains("`openat`"), "{}", err.message);
        let writes = Capture {
            data_syscalls: Some(vec!["write".into()]),
            ..Capture::default()
        };
        let settings = writes.validate().unwrap();
        let write = syscalls::Sysno::write.id() as u32;
        assert!(settings.captures_data_of(write));
        assert!(!settings.captures_data_of(syscalls::Sysno::read.id() as u32));
    }
}
