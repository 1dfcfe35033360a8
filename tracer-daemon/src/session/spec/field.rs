//! Checks of single fields, each error naming its field.
use std::time::Duration;

pub const MAX_NAME_LEN: usize = 128;
/// A duration as sessions take it: a whole number and one unit (the OpenAPI document says
/// the same with this pattern).
pub const TTL_PATTERN: &str = "^[1-9][0-9]{0,8}(ms|s|m|h|d)$";

/// A request that cannot be accepted, naming the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        invalid(field, message)
    }
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        message: message.into(),
    }
}

/// Parses a duration: the [`TTL_PATTERN`] form new requests must use, or the freer one
/// (`"1h30m"`, up to 30 days) requests stored by earlier releases may hold, so those
/// sessions still resume.
pub(super) fn parse_ttl(field: &'static str, text: &str) -> Result<Duration, InvalidField> {
    parse_strict_ttl(field, text).or_else(|strict| {
        humantime::parse_duration(text)
            .ok()
            .filter(|ttl| !ttl.is_zero() && *ttl <= Duration::from_secs(30 * 24 * 3600))
            .ok_or(strict)
    })
}

/// Parses a [`TTL_PATTERN`] duration: `500ms`, `30s`, `5m`, `2h`, `7d`.
pub(super) fn parse_strict_ttl(field: &'static str, text: &str) -> Result<Duration, InvalidField> {
    let bad = || {
        invalid(
            field,
            format!("`{text}` is not a duration: a number from 1 and one of ms, s, m, h, d (\"30s\", \"5m\")"),
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.len() > 9 || number.starts_with('0') {
        return Err(bad());
    }
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(number * seconds))
}

pub(super) fn validate_name(name: &str) -> Result<(), InvalidField> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "name",
            "may contain only letters, digits, `.`, `_` and `-`",
        ));
    }
    Ok(())
}

pub fn validate_tenant(tenant: &str) -> Result<(), InvalidField> {
    if tenant.is_empty()
        || tenant.len() > 64
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "tenant",
            "must be 1 to 64 letters, digits, `.`, `_` or `-`",
        ));
    }
    Ok(())
}
