//! Field names matched as calicoctl matches them.
//!
//! calicoctl decodes resources with Go's `encoding/json`, which takes a key that names no
//! field exactly for the field whose name equals it ignoring case: `exportv4`,
//! `ExportV4` and `EXPORTV4` all set `exportV4`. [`Folded`] wraps a JSON value as a serde
//! deserializer that does the same for every struct it meets at any depth: before a
//! struct sees its keys, each key that is not one of the struct's field names is
//! replaced by the field name it equals ignoring ASCII case. The typed value that comes
//! out serializes with the canonical names, so that is what is stored.
//!
//! Keys that match no field in any case are left as written, so `deny_unknown_fields`
//! still names them. Two keys that fold to one field (`natOutgoing` and `natoutgoing`)
//! are an error naming both, rather than Go's silent "last one wins".

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde_json::{Map, Value};

/// A JSON value whose struct keys are matched to field names ignoring case.
#[derive(Debug)]
pub struct Folded(pub Value);

type Error = serde_json::Error;

/// The field name `key` stands for among `fields`: itself when it is one, else the
/// only field equal to it ignoring ASCII case, else itself.
pub fn canonical_key<'a>(key: &'a str, fields: &[&'static str]) -> &'a str {
    if fields.contains(&key) {
        return key;
    }
    fields
        .iter()
        .find(|f| f.eq_ignore_ascii_case(key))
        .copied()
        .unwrap_or(key)
}

/// Rename the keys of `map` to the field names they stand for. Two keys that stand for
/// one field are an error naming both.
pub fn fold_keys(
    map: Map<String, Value>,
    fields: &[&'static str],
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut given: Vec<(String, String)> = Vec::new();
    for (k, v) in map {
        let name = canonical_key(&k, fields).to_string();
        if let Some((_, first)) = given.iter().find(|(n, _)| *n == name) {
            return Err(format!(
                "{first:?} and {k:?} both set the field {name:?} (field names match ignoring case)"
            ));
        }
        given.push((name.clone(), k));
        out.insert(name, v);
    }
    Ok(out)
}

impl<'de> IntoDeserializer<'de, Error> for Folded {
    type Deserializer = Folded;
    fn into_deserializer(self) -> Folded {
        self
    }
}

fn visit_map<'de, V: Visitor<'de>>(map: Map<String, Value>, visitor: V) -> Result<V::Value, Error> {
    let mut access = MapDeserializer::new(map.into_iter().map(|(k, v)| (k, Folded(v))));
    let out = visitor.visit_map(&mut access)?;
    access.end()?;
    Ok(out)
}

fn visit_seq<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let mut access = SeqDeserializer::new(items.into_iter().map(Folded));
    let out = visitor.visit_seq(&mut access)?;
    access.end()?;
    Ok(out)
}

impl<'de> Deserializer<'de> for Folded {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => visit_map(m, visitor),
            Value::Array(a) => visit_seq(a, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(m) => {
                visit_map(fold_keys(m, fields).map_err(de::Error::custom)?, visitor)
            }
            other => Folded(other).deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Inner {
        #[serde(rename = "exportV4", default)]
        export_v4: Vec<u32>,
        #[serde(default)]
        as_number: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Outer {
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
    }

    fn read(v: Value) -> Result<Outer, String> {
        serde_path_to_error::deserialize(Folded(v)).map_err(|e| format!("{}: {}", e.path(), e))
    }

    #[test]
    fn keys_match_ignoring_case_at_any_depth() {
        let o = read(serde_json::json!({
            "INNER": {"exportv4": [1], "asnumber": 2},
            "List": [{"ExportV4": [3]}],
        }))
        .expect("folded");
        assert_eq!(
            o,
            Outer {
                inner: Some(Inner {
                    export_v4: vec![1],
                    as_number: Some(2)
                }),
                list: vec![Inner {
                    export_v4: vec![3],
                    as_number: None
                }],
            }
        );
    }

    #[test]
    fn unknown_and_doubled_keys_are_refused() {
        let e = read(serde_json::json!({"inner": {"exportV5": []}})).expect_err("unknown");
        assert!(e.contains("unknown field `exportV5`"), "{e}");
        let e = read(serde_json::json!({"inner": {"exportV4": [], "EXPORTV4": []}}))
            .expect_err("twice");
        assert!(e.contains("both set the field \"exportV4\""), "{e}");
    }
}
