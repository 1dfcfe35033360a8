//! Where the API listens: a TCP address, or a unix socket (`unix:/run/tracerd/tracerd.sock`)
//! for local clients, whose file mode and group say who may connect.
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// Whether only this machine can connect: a loopback address or a unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            Listen::Tcp(address) => address.ip().is_loopback(),
            Listen::Unix(_) => true,
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{path}`: a unix socket needs an absolute path"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(Listen::Tcp)
            .map_err(|err| format!("`{text}` is neither ADDRESS:PORT nor unix:/PATH ({err})"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(address) => write!(f, "{address}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A unix socket's mode, in octal (`660`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal file mode such as 660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_and_unix_sockets() {
        assert_eq!(
            "127.0.0.1:8080".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        let unix: Listen = "unix:/run/tracerd/tracerd.sock".parse().unwrap();
        assert_eq!(unix.to_string(), "unix:/run/tracerd/tracerd.sock");
        assert!(unix.is_local());
        assert!(!"0.0.0.0:8080".parse::<Listen>().unwrap().is_local());
        assert!("unix:relative.sock".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
    }
}
