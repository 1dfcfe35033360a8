//! Checks of single fields, each error naming its field.
use std::time::Duration;

const MAX_NAME_LEN: usize = 128;
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

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

pub(super) fn parse_ttl(field: &'static str, text: &str) -> Result<Duration, InvalidField> {
    let ttl = humantime::parse_duration(text).map_err(|err| {
        invalid(
            field,
            format!("`{text}` is not a duration like \"30s\" or \"5m\": {err}"),
        )
    })?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(field, "must be more than 0 and at most 30 days"));
    }
    Ok(ttl)
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
