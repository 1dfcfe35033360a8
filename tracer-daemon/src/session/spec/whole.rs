//! Whole numbers as JSON has them: `5` or `5.0`. JSON has one number type, JSON Schema
//! counts `5.0` as an integer, and some clients write every number with a fraction; serde
//! alone refuses `5.0` for an integer field.
use std::{fmt, marker::PhantomData};

use serde::{de, Deserialize, Deserializer};

/// A whole number that fits `T`, from an integer or an integral float.
struct Whole<T>(T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Whole<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);

        impl<T: TryFrom<u64>> de::Visitor<'_> for Visitor<T> {
            type Value = Whole<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a whole number from 0 to {}", std::any::type_name::<T>())
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                T::try_from(value)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                let unsigned = u64::try_from(value)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))?;
                self.visit_u64(unsigned)
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                // Below 2^64 and without a fraction: exactly a u64.
                if value.fract() != 0.0 || !(0.0..18_446_744_073_709_551_616.0).contains(&value) {
                    return Err(E::invalid_value(de::Unexpected::Float(value), &self));
                }
                self.visit_u64(value as u64)
            }
        }

        deserializer.deserialize_any(Visitor(PhantomData))
    }
}

/// For `Option<T>` fields: `#[serde(default, deserialize_with = "whole::option")]`.
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|whole| whole.0))
}

/// For `Option<Vec<T>>` fields: `#[serde(default, deserialize_with = "whole::option_list")]`.
pub fn option_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let list = Option::<Vec<Whole<T>>>::deserialize(deserializer)?;
    Ok(list.map(|list| list.into_iter().map(|whole| whole.0).collect()))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Limits {
        #[serde(default, deserialize_with = "super::option")]
        kb: Option<u32>,
        #[serde(default, deserialize_with = "super::option_list")]
        pids: Option<Vec<u32>>,
    }

    fn parse(json: &str) -> Result<Limits, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn integral_floats_are_whole_numbers_and_the_rest_are_refused() {
        let limits = parse(r#"{"kb": 5815.0, "pids": [1, 2.0]}"#).unwrap();
        assert_eq!(
            limits,
            Limits {
                kb: Some(5815),
                pids: Some(vec![1, 2])
            }
        );
        assert_eq!(
            parse("{}").unwrap(),
            Limits {
                kb: None,
                pids: None
            }
        );
        assert_eq!(parse(r#"{"kb": null}"#).unwrap().kb, None);
        for bad in [
            r#"{"kb": 1.5}"#,
            r#"{"kb": -1}"#,
            r#"{"kb": 4294967296}"#,
            r#"{"kb": "1"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
