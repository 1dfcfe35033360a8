//! Socket addresses as strace prints them, from the bytes the kernel read.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{quote::quoted, symbols};

/// `{sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}` and the
/// like for AF_INET, AF_INET6 and AF_UNIX; other families show their raw bytes.
pub fn sockaddr(bytes: &[u8]) -> String {
    let Some(family) = bytes.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return "{}".to_owned();
    };
    let family_name = symbols::symbol(u64::from(family), symbols::ADDRESS_FAMILIES);
    let port = || bytes.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match i32::from(family) {
        libc::AF_INET => {
            if let (Some(port), Some(addr)) = (port(), bytes.get(4..8)) {
                let addr = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
                return format!(
                    "{{sa_family={family_name}, sin_port=htons({port}), sin_addr=inet_addr(\"{addr}\")}}"
                );
            }
        }
        libc::AF_INET6 => {
            if let (Some(port), Some(flow), Some(addr), Some(scope)) =
                (port(), bytes.get(4..8), bytes.get(8..24), bytes.get(24..28))
            {
                let flow = u32::from_be_bytes(flow.try_into().unwrap_or_default());
                let addr = Ipv6Addr::from(<[u8; 16]>::try_from(addr).unwrap_or_default());
                let scope = u32::from_ne_bytes(scope.try_into().unwrap_or_default());
                return format!(
                    "{{sa_family={family_name}, sin6_port=htons({port}), sin6_flowinfo=htonl({flow}), inet_pton({family_name}, \"{addr}\", &sin6_addr), sin6_scope_id={scope}}}"
                );
            }
        }
        libc::AF_UNIX => {
            let path = &bytes[2..];
            if path.is_empty() {
                return format!("{{sa_family={family_name}}}");
            }
            // An abstract socket's name starts with a NUL and is not NUL-terminated.
            if let Some(name) = path.strip_prefix(&[0]) {
                return format!(
                    "{{sa_family={family_name}, sun_path=@{}}}",
                    quoted(name, false)
                );
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            return format!(
                "{{sa_family={family_name}, sun_path={}}}",
                quoted(&path[..end], false)
            );
        }
        _ => {}
    }
    format!(
        "{{sa_family={family_name}, sa_data={}}}",
        quoted(bytes.get(2..).unwrap_or_default(), false)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_inet6_and_unix_addresses() {
        let mut inet = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
        inet.extend_from_slice(&[0; 8]);
        assert_eq!(
            sockaddr(&inet),
            r#"{sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}"#
        );
        let mut inet6 = vec![10, 0, 0, 80, 0, 0, 0, 0];
        inet6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        inet6.extend_from_slice(&[0; 4]);
        assert_eq!(
            sockaddr(&inet6),
            r#"{sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}"#
        );
        let mut unix = vec![1, 0];
        unix.extend_from_slice(b"/tmp/s.sock\0\0\0");
        assert_eq!(
            sockaddr(&unix),
            r#"{sa_family=AF_UNIX, sun_path="/tmp/s.sock"}"#
        );
        assert_eq!(
            sockaddr(&[1, 0, 0, b'x']),
            r#"{sa_family=AF_UNIX, sun_path=@"x"}"#
        );
        assert_eq!(sockaddr(&[1]), "{}");
    }
}
