//! The protobuf wire format, as much of it as an OTLP span takes: fields written straight
//! into a buffer, with every nested message's length computed rather than encoded twice.
//!
//! Why by hand: building opentelemetry-proto's message structs allocates every key and value
//! of every span, and prost then walks them twice (lengths, then bytes); that conversion and
//! encoding cost 2.1 µs a span (`cargo xtask bench otlp`), the most of export. prost's own
//! field encoders are hidden from its documentation (they serve its derived code), so the
//! few this needs are here. The layout is checked against opentelemetry-proto's types by
//! decoding with them (the tests of this module and of [`super::span`]).

/// A field's wire type (the low three bits of its key).
#[derive(Clone, Copy)]
enum Wire {
    Varint = 0,
    Fixed64 = 1,
    Len = 2,
    Fixed32 = 5,
}

/// Appends `value` as a base-128 varint.
pub fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// The bytes [`varint`] takes for `value`.
pub fn varint_len(value: u64) -> usize {
    // Seven bits a byte; zero still takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(buf: &mut Vec<u8>, tag: u32, wire: Wire) {
    varint(buf, u64::from(tag << 3 | wire as u32));
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// The bytes a length-delimited field of `len` bytes takes, its key and length included.
pub fn len_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

/// Starts a length-delimited field (a message, string or bytes) of `len` bytes: the caller
/// appends exactly `len` bytes next.
pub fn len_prefix(buf: &mut Vec<u8>, tag: u32, len: usize) {
    key(buf, tag, Wire::Len);
    varint(buf, len as u64);
}

/// A `bytes` or `string` field.
pub fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    len_prefix(buf, tag, value.len());
    buf.extend_from_slice(value);
}

/// A `uint64`, `int64` or enum field (negative numbers take ten bytes, as protobuf says).
pub fn uint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    key(buf, tag, Wire::Varint);
    varint(buf, value);
}

pub fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    key(buf, tag, Wire::Fixed64);
    buf.extend_from_slice(&value.to_le_bytes());
}

pub fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    key(buf, tag, Wire::Fixed32);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// An attribute's value: OTLP's `AnyValue`, in the kinds spans use.
#[derive(Clone, Copy, Debug)]
pub enum AnyValue<'a> {
    Str(&'a str),
    Int(i64),
    Ints(&'a [i64]),
    Strs(&'a [String]),
}

/// `AnyValue`'s fields.
mod any {
    pub const STRING: u32 = 1;
    pub const INT: u32 = 3;
    pub const ARRAY: u32 = 5;
    /// `ArrayValue.values`.
    pub const ARRAY_VALUES: u32 = 1;
}

impl AnyValue<'_> {
    /// The length of the `AnyValue` message.
    fn len(&self) -> usize {
        match *self {
            AnyValue::Str(text) => len_field_len(any::STRING, text.len()),
            AnyValue::Int(number) => key_len(any::INT) + varint_len(number as u64),
            AnyValue::Ints(numbers) => len_field_len(any::ARRAY, Self::ints_len(numbers)),
            AnyValue::Strs(texts) => len_field_len(any::ARRAY, Self::strs_len(texts)),
        }
    }

    fn ints_len(numbers: &[i64]) -> usize {
        numbers
            .iter()
            .map(|&n| len_field_len(any::ARRAY_VALUES, AnyValue::Int(n).len()))
            .sum()
    }

    fn strs_len(texts: &[String]) -> usize {
        texts
            .iter()
            .map(|text| len_field_len(any::ARRAY_VALUES, AnyValue::Str(text).len()))
            .sum()
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match *self {
            AnyValue::Str(text) => bytes(buf, any::STRING, text.as_bytes()),
            AnyValue::Int(number) => uint(buf, any::INT, number as u64),
            AnyValue::Ints(numbers) => {
                len_prefix(buf, any::ARRAY, Self::ints_len(numbers));
                for &number in numbers {
                    let item = AnyValue::Int(number);
                    len_prefix(buf, any::ARRAY_VALUES, item.len());
                    item.write(buf);
                }
            }
            AnyValue::Strs(texts) => {
                len_prefix(buf, any::ARRAY, Self::strs_len(texts));
                for text in texts {
                    let item = AnyValue::Str(text);
                    len_prefix(buf, any::ARRAY_VALUES, item.len());
                    item.write(buf);
                }
            }
        }
    }
}

/// A `KeyValue` field (tag `tag` of the enclosing message) whose key is `prefix` followed by
/// `name` (so `tracer.param.<name>` needs no string of its own).
pub fn key_value(buf: &mut Vec<u8>, tag: u32, (prefix, name): (&str, &str), value: AnyValue) {
    const KEY: u32 = 1;
    const VALUE: u32 = 2;
    let key_len = prefix.len() + name.len();
    let value_len = value.len();
    let len = len_field_len(KEY, key_len) + len_field_len(VALUE, value_len);
    buf.reserve(len_field_len(tag, len));
    len_prefix(buf, tag, len);
    len_prefix(buf, KEY, key_len);
    buf.extend_from_slice(prefix.as_bytes());
    buf.extend_from_slice(name.as_bytes());
    len_prefix(buf, VALUE, value_len);
    value.write(buf);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue as Proto, KeyValue};
    use prost::Message as _;

    use super::*;

    #[test]
    fn varints_match_prost() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            varint(&mut ours, value);
            assert_eq!(ours.len(), varint_len(value), "{value}");
            let mut theirs = Vec::new();
            prost::encode_length_delimiter(value as usize, &mut theirs).unwrap();
            assert_eq!(ours, theirs, "{value}");
        }
    }

    fn decode(value: AnyValue) -> KeyValue {
        let mut buf = Vec::new();
        key_value(&mut buf, 1, ("tracer.param.", "fd"), value);
        // The field as the only field of a message: a wrapper with `repeated KeyValue = 1`.
        #[derive(prost::Message)]
        struct Wrapper {
            #[prost(message, repeated, tag = "1")]
            values: Vec<KeyValue>,
        }
        let mut wrapper = Wrapper::decode(buf.as_slice()).expect("decodes");
        assert_eq!(wrapper.values.len(), 1);
        wrapper.values.remove(0)
    }

    fn value(kv: KeyValue) -> any_value::Value {
        assert_eq!(kv.key, "tracer.param.fd");
        kv.value.and_then(|value| value.value).expect("a value")
    }

    #[test]
    fn key_values_decode_with_opentelemetry_proto() {
        use any_value::Value::{self, *};
        assert_eq!(value(decode(AnyValue::Int(-2))), IntValue(-2));
        assert_eq!(value(decode(AnyValue::Int(1 << 40))), IntValue(1 << 40));
        assert_eq!(
            value(decode(AnyValue::Str("/etc/hosts"))),
            StringValue("/etc/hosts".into())
        );
        let Value::ArrayValue(ints) = value(decode(AnyValue::Ints(&[3, -1, 0]))) else {
            panic!("an array")
        };
        let ints: Vec<_> = ints.values.into_iter().map(|v| v.value).collect();
        assert_eq!(
            ints,
            [Some(IntValue(3)), Some(IntValue(-1)), Some(IntValue(0))]
        );
        let texts = ["sh".to_owned(), "-c".to_owned(), String::new()];
        let Value::ArrayValue(strs) = value(decode(AnyValue::Strs(&texts))) else {
            panic!("an array")
        };
        let strs: Vec<_> = strs.values.into_iter().map(|v: Proto| v.value).collect();
        assert_eq!(
            strs,
            texts.map(|text| Some(StringValue(text))).to_vec(),
            "empty strings too"
        );
    }
}
