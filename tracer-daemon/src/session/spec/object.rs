//! JSON objects only. serde's derive also reads a struct from a JSON array of its fields in
//! order (`"limits": [null, "30s"]`), which the API neither documents nor wants: these read
//! a field's value as an object first.
use serde::{de::DeserializeOwned, Deserialize, Deserializer};
use serde_json::{Map, Value};

/// For struct fields: `#[serde(deserialize_with = "object::only")]`.
pub fn only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let object = Map::<String, Value>::deserialize(deserializer)?;
    T::deserialize(Value::Object(object)).map_err(serde::de::Error::custom)
}

/// For `Option<struct>` fields: `#[serde(default, deserialize_with = "object::option")]`.
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Map<String, Value>>::deserialize(deserializer)? {
        Some(object) => T::deserialize(Value::Object(object))
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq, Default)]
    struct Inner {
        a: Option<u32>,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Outer {
        #[serde(default, deserialize_with = "super::only")]
        inner: Inner,
        #[serde(default, deserialize_with = "super::option")]
        maybe: Option<Inner>,
    }

    #[test]
    fn structs_are_read_from_objects_and_never_from_arrays() {
        let outer: Outer = serde_json::from_str(r#"{"inner": {"a": 1}, "maybe": null}"#).unwrap();
        assert_eq!(outer.inner.a, Some(1));
        assert_eq!(outer.maybe, None);
        assert!(serde_json::from_str::<Outer>(r#"{"inner": [1]}"#).is_err());
        assert!(serde_json::from_str::<Outer>(r#"{"maybe": [null]}"#).is_err());
        let outer: Outer = serde_json::from_str("{}").unwrap();
        assert_eq!(outer.inner, Inner::default());
    }
}
