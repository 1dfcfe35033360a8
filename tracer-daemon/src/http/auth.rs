//! Who is calling: bearer tokens mapped to tenants (and the admin role) by a token file.
//! Without a token file a loopback listener treats every caller as the admin of tenant
//! `default`; any other listener requires the admin token kept in the data directory.
use std::{collections::HashMap, path::Path, sync::Arc};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::error::ApiError;
use crate::session::{spec::validate_tenant, Principal};

/// The token file (TOML):
///
/// ```toml
/// [[token]]
/// token = "a-long-random-secret"
/// tenant = "team-a"
///
/// [[token]]
/// token = "another-secret"
/// tenant = "ops"
/// admin = true
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    tenant: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// How callers are identified.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No token file: every caller is the admin of tenant `default`.
    Open,
    /// Bearer token → principal.
    Tokens(Arc<HashMap<String, Principal>>),
}

impl Auth {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: name.clone(),
            source,
        })?;
        let file: TokenFile = toml::from_str(&text).map_err(|source| TokenFileError::Parse {
            path: name.clone(),
            source,
        })?;
        let invalid = |message: String| TokenFileError::Invalid {
            path: name.clone(),
            message,
        };
        if file.token.is_empty() {
            return Err(invalid("no [[token]] entries".into()));
        }
        let mut tokens = HashMap::new();
        for entry in file.token {
            if entry.token.len() < 16 {
                return Err(invalid(format!(
                    "the token of tenant {} is shorter than 16 characters",
                    entry.tenant
                )));
            }
            validate_tenant(&entry.tenant).map_err(|err| invalid(err.to_string()))?;
            let principal = Principal {
                tenant: entry.tenant,
                admin: entry.admin,
            };
            if tokens.insert(entry.token, principal).is_some() {
                return Err(invalid("the same token appears twice".into()));
            }
        }
        Ok(Auth::Tokens(Arc::new(tokens)))
    }

    /// Only the admin, with `token`.
    pub fn admin(token: String) -> Self {
        let admin = Principal {
            tenant: "admin".into(),
            admin: true,
        };
        Auth::Tokens(Arc::new(HashMap::from([(token, admin)])))
    }

    /// Whether callers must send a token.
    pub fn has_tokens(&self) -> bool {
        matches!(self, Auth::Tokens(_))
    }

    pub(super) fn principal(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        match self {
            Auth::Open => Ok(Principal {
                tenant: "default".into(),
                admin: true,
            }),
            Auth::Tokens(tokens) => {
                let token = authorization
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        ApiError::unauthorized("send `Authorization: Bearer <token>`")
                    })?;
                // Every token is compared, each in constant time: how long the check takes
                // says nothing about how close a guess came.
                let token = token.trim().as_bytes();
                let mut found = None;
                for (known, principal) in tokens.iter() {
                    if bool::from(known.as_bytes().ct_eq(token)) {
                        found = Some(principal);
                    }
                }
                found
                    .cloned()
                    .ok_or_else(|| ApiError::unauthorized("unknown token"))
            }
        }
    }
}

/// The caller of any handler whose state holds an [`Auth`].
impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let authorization = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        Auth::from_ref(state).principal(authorization)
    }
}

/// The admin token kept at `path`: read, or made (random, 64 hex characters) and written with
/// mode 0600 if there is none. Returns it and whether it was made now.
pub fn admin_token(path: &Path) -> Result<(String, bool), TokenFileError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 16 => return Ok((text.trim().to_owned(), false)),
        Ok(_) => {
            return Err(TokenFileError::Invalid {
                path: name,
                message: "the admin token is shorter than 16 characters".into(),
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TokenFileError::Read { path: name, source }),
    }
    // Two version-4 UUIDs: 244 random bits from the operating system's generator.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TokenFileError::Read {
            path: name.clone(),
            source,
        })?;
    writeln!(file, "{token}").map_err(|source| TokenFileError::Read { path: name, source })?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("tracerd-tokens-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_admin_token_is_made_once_private_and_then_kept() {
        let path = std::env::temp_dir().join(format!("tracerd-admin-token-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (token, created) = admin_token(&path).unwrap();
        assert!(created);
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(admin_token(&path).unwrap(), (token.clone(), false));
        let auth = Auth::admin(token.clone());
        assert!(
            auth.principal(Some(&format!("Bearer {token}")))
                .unwrap()
                .admin
        );
        assert!(auth.principal(Some("Bearer not-the-token-at-all")).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tokens_map_to_tenants_and_roles() {
        let path = write(
            "ok",
            "[[token]]\ntoken = \"aaaaaaaaaaaaaaaa\"\ntenant = \"team-a\"\n\n[[token]]\ntoken = \"bbbbbbbbbbbbbbbb\"\ntenant = \"ops\"\nadmin = true\n",
        );
        let auth = Auth::load(&path).unwrap();
        let a = auth.principal(Some("Bearer aaaaaaaaaaaaaaaa")).unwrap();
        assert_eq!(
            a,
            Principal {
                tenant: "team-a".into(),
                admin: false
            }
        );
        assert!(
            auth.principal(Some("Bearer bbbbbbbbbbbbbbbb"))
                .unwrap()
                .admin
        );
        assert!(auth.principal(Some("Bearer nope")).is_err());
        assert!(auth.principal(None).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn weak_or_malformed_token_files_are_refused() {
        for (name, text) in [
            ("short", "[[token]]\ntoken = \"short\"\ntenant = \"a\"\n"),
            ("empty", ""),
            (
                "unknown",
                "[[token]]\ntoken = \"aaaaaaaaaaaaaaaa\"\ntenant = \"a\"\nrole = \"x\"\n",
            ),
            (
                "tenant",
                "[[token]]\ntoken = \"aaaaaaaaaaaaaaaa\"\ntenant = \"a b\"\n",
            ),
        ] {
            let path = write(name, text);
            assert!(Auth::load(&path).is_err(), "{name}");
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn without_a_token_file_everyone_is_the_default_admin() {
        let principal = Auth::Open.principal(None).unwrap();
        assert_eq!(
            principal,
            Principal {
                tenant: "default".into(),
                admin: true
            }
        );
    }
}
