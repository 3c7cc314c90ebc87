//! Conversion between the model's JSON documents and the protobuf `Resource`
//! (typed metadata, `google.protobuf.Struct` spec, Secret `data` map).

use prost_types::value::Kind as PKind;
use serde_json::{Map, Number, Value};

use super::{API_VERSION, FieldError, Kind, ObjectMeta, Resource};
use crate::proto;

/// What a redacted secret value reads as.
pub const REDACTED: &str = "<redacted>";

/// JSON value -> protobuf Value.
pub fn json_to_proto(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => PKind::NullValue(0),
        Value::Bool(b) => PKind::BoolValue(*b),
        Value::Number(n) => PKind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => PKind::StringValue(s.clone()),
        Value::Array(a) => PKind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_proto).collect(),
        }),
        Value::Object(o) => PKind::StructValue(json_map_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_map_to_struct(o: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto(v)))
            .collect(),
    }
}

/// protobuf Value -> JSON value. Struct numbers are doubles; integral ones become
/// JSON integers again so that integer fields (blockSize, asNumber) parse.
pub fn proto_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(PKind::NullValue(_)) => Value::Null,
        Some(PKind::BoolValue(b)) => Value::Bool(*b),
        Some(PKind::NumberValue(f)) => {
            if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                Value::Number(Number::from(*f as i64))
            } else {
                Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
        }
        Some(PKind::StringValue(s)) => Value::String(s.clone()),
        Some(PKind::ListValue(l)) => Value::Array(l.values.iter().map(proto_to_json).collect()),
        Some(PKind::StructValue(s)) => Value::Object(struct_to_json_map(s)),
    }
}

pub fn struct_to_json_map(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), proto_to_json(v)))
        .collect()
}

fn meta_to_proto(m: &ObjectMeta) -> proto::ObjectMeta {
    proto::ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone().into_iter().collect(),
        annotations: m.annotations.clone().into_iter().collect(),
        resource_version: m.resource_version.clone(),
        uid: m.uid.clone(),
        creation_timestamp: m.creation_timestamp.clone(),
    }
}

fn meta_to_json(m: &proto::ObjectMeta) -> Value {
    let meta = ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone().into_iter().collect(),
        annotations: m.annotations.clone().into_iter().collect(),
        resource_version: m.resource_version.clone(),
        uid: m.uid.clone(),
        creation_timestamp: m.creation_timestamp.clone(),
    };
    serde_json::to_value(meta).expect("metadata always serializes")
}

/// Model -> protobuf. Secret values are replaced by [`REDACTED`] unless `show_secrets`.
pub fn to_proto(r: &Resource, show_secrets: bool) -> proto::Resource {
    let (spec, data) = match r {
        Resource::Secret(s) => {
            let data = s
                .spec
                .iter()
                .map(|(k, v)| {
                    let val = if show_secrets {
                        v.expose().to_string()
                    } else {
                        REDACTED.to_string()
                    };
                    (k.clone(), val)
                })
                .collect();
            (None, data)
        }
        other => {
            let v = other.to_value();
            let spec = match v.get("spec") {
                Some(Value::Object(o)) => Some(json_map_to_struct(o)),
                _ => Some(prost_types::Struct::default()),
            };
            (spec, Default::default())
        }
    };
    proto::Resource {
        api_version: API_VERSION.to_string(),
        kind: r.kind().as_str().to_string(),
        metadata: Some(meta_to_proto(r.metadata())),
        spec,
        data,
        warnings: Vec::new(),
    }
}

/// The JSON document of a protobuf resource, before validation.
pub fn proto_to_value(p: &proto::Resource) -> Value {
    let mut map = Map::new();
    let api = if p.api_version.is_empty() {
        API_VERSION.to_string()
    } else {
        p.api_version.clone()
    };
    map.insert("apiVersion".into(), Value::String(api));
    map.insert("kind".into(), Value::String(p.kind.clone()));
    if let Some(m) = &p.metadata {
        map.insert("metadata".into(), meta_to_json(m));
    }
    if p.kind == Kind::Secret.as_str() {
        let data: Map<String, Value> = p
            .data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("stringData".into(), Value::Object(data));
    } else if let Some(s) = &p.spec {
        map.insert("spec".into(), Value::Object(struct_to_json_map(s)));
    }
    Value::Object(map)
}

/// A manifest document -> protobuf, without validating the spec (the server does
/// that and names the field). Secret `data` (base64) and `stringData` (plain) both
/// become plain values in `data`.
pub fn value_to_proto(v: &Value) -> Result<proto::Resource, FieldError> {
    let Value::Object(map) = v else {
        return Err(FieldError::new("", "a resource must be a JSON/YAML object"));
    };
    let s = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let meta: ObjectMeta = match map.get("metadata") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| FieldError::new("metadata", e.to_string()))?,
        None => return Err(FieldError::new("metadata.name", "required")),
    };
    let mut secret = Map::new();
    for k in ["data", "stringData"] {
        if let Some(v) = map.get(k) {
            secret.insert(k.to_string(), v.clone());
        }
    }
    let data = super::take_secret_data(&mut secret)?
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_string()))
        .collect();
    let spec = match map.get("spec") {
        Some(Value::Object(o)) => Some(json_map_to_struct(o)),
        Some(Value::Null) | None => None,
        Some(_) => return Err(FieldError::new("spec", "must be an object")),
    };
    Ok(proto::Resource {
        api_version: s("apiVersion"),
        kind: s("kind"),
        metadata: Some(meta_to_proto(&meta)),
        spec,
        data,
        warnings: Vec::new(),
    })
}

/// The response to a write: the stored object, with a warning for every field stored
/// without effect.
pub fn written(r: &Resource) -> proto::Resource {
    let mut p = to_proto(r, false);
    p.warnings = super::stored_only(r)
        .into_iter()
        .map(|w| proto::FieldWarning {
            field: w.field,
            message: w.message,
        })
        .collect();
    p
}

/// protobuf -> the JSON document `ternctl get -o yaml|json` prints: Secret values are
/// base64 in `data` as Kubernetes prints them, or `<redacted>`.
pub fn proto_to_display(p: &proto::Resource) -> Value {
    use base64::Engine as _;
    let mut v = proto_to_value(p);
    if p.kind == Kind::Secret.as_str()
        && let Value::Object(map) = &mut v
    {
        map.remove("stringData");
        let data: Map<String, Value> = p
            .data
            .iter()
            .map(|(k, val)| {
                let shown = if val == REDACTED {
                    val.clone()
                } else {
                    base64::engine::general_purpose::STANDARD.encode(val)
                };
                (k.clone(), Value::String(shown))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        map.insert("data".into(), Value::Object(data));
    }
    v
}

/// protobuf -> model. Secret data in the protobuf message is plain text.
pub fn from_proto(p: &proto::Resource) -> Result<Resource, FieldError> {
    if p.metadata.is_none() {
        return Err(FieldError::new("metadata", "required"));
    }
    Resource::from_value(proto_to_value(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_proto() {
        let v: Value = crate::manifest::from_str(
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: p, labels: {a: b}}\nspec: {peerIP: '10.0.0.1:1790', asNumber: 4294967295, ttlSecurity: 2}\n",
        )
        .expect("yaml");
        let r = Resource::from_value(v).expect("valid");
        let p = to_proto(&r, false);
        let back = from_proto(&p).expect("back");
        assert_eq!(back, r);
    }

    #[test]
    fn manifest_secret_values_must_be_strings() {
        let v: Value = serde_json::json!({
            "apiVersion": "tern.dev/v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"pw": 12345678}
        });
        let e = value_to_proto(&v).expect_err("a number is not a password");
        assert_eq!(e.field, "stringData.pw");
        assert!(
            !e.to_string().contains("12345678"),
            "the value is not echoed: {e}"
        );
    }

    #[test]
    fn secrets_are_redacted_unless_asked() {
        let v: Value = crate::manifest::from_str(
            "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: s}\nstringData: {pw: hunter2}\n",
        )
        .expect("yaml");
        let r = Resource::from_value(v).expect("valid");
        assert_eq!(to_proto(&r, false).data["pw"], REDACTED);
        assert_eq!(to_proto(&r, true).data["pw"], "hunter2");
        assert_eq!(from_proto(&to_proto(&r, true)).expect("back"), r);
    }
}
