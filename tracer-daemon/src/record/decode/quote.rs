//! Strings and buffers quoted the way strace prints them (C escapes, octal for the rest,
//! `...` after the closing quote when cut).
use std::fmt::Write as _;

/// `bytes` quoted; `cut` appends strace's `...` (there was more than was kept).
pub fn quoted(bytes: &[u8], cut: bool) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0b => out.push_str("\\v"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7e => out.push(byte as char),
            _ => {
                // Octal, as short as it can be unless a digit follows (then three digits,
                // so the digit is not read as part of the escape).
                let digit_follows = bytes
                    .get(index + 1)
                    .is_some_and(|next| (b'0'..=b'7').contains(next));
                if digit_follows {
                    let _ = write!(out, "\\{byte:03o}");
                } else {
                    let _ = write!(out, "\\{byte:o}");
                }
            }
        }
    }
    out.push('"');
    if cut {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_strace() {
        assert_eq!(quoted(b"hello\n", false), r#""hello\n""#);
        assert_eq!(quoted(b"a\"b\\c\t", false), r#""a\"b\\c\t""#);
        assert_eq!(quoted(b"\x7fELF\x02\x01", false), r#""\177ELF\2\1""#);
        assert_eq!(quoted(b"\x001", false), r#""\0001""#);
        assert_eq!(quoted(b"\x00a", false), r#""\0a""#);
        assert_eq!(quoted(b"abc", true), r#""abc"..."#);
    }
}
