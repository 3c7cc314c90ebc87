//! Patching a resource document: JSON merge patch (RFC 7386, the default, as
//! calicoctl) and JSON patch (RFC 6902).
//!
//! [`apply_patch`] works on the JSON document of a resource (what `get -o json`
//! shows) and returns the patched document; the caller parses, normalizes and
//! validates it like any write. A patch may not change `apiVersion`, `kind` or
//! `metadata.name`. Errors say where: the position of a JSON syntax error, the index,
//! op and path of a JSON patch operation that fails.

use std::fmt;
use std::str::FromStr;

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

/// The patch formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchType {
    /// RFC 7386 JSON merge patch: an object whose fields replace the document's
    /// (`null` removes a field; lists are replaced whole).
    #[default]
    Merge,
    /// RFC 6902 JSON patch: an array of `add`, `remove`, `replace`, `move`, `copy` and
    /// `test` operations on JSON pointers.
    Json,
}

impl PatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchType::Merge => "merge",
            PatchType::Json => "json",
        }
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PatchType {
    type Err = String;
    /// `merge` or `json` (as `ternctl patch --type` takes them).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "merge" => Ok(PatchType::Merge),
            "json" => Ok(PatchType::Json),
            _ => Err(format!(
                "unknown patch type {s:?} (use merge for RFC 7386 or json for RFC 6902)"
            )),
        }
    }
}

/// Fields a patch may not change.
const IDENTITY_FIELDS: [(&str, &str); 3] = [
    ("apiVersion", "/apiVersion"),
    ("kind", "/kind"),
    ("metadata.name", "/metadata/name"),
];

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is empty")]
    Empty,
    #[error("the patch is not valid JSON: {message} at line {line} column {column}")]
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("a JSON merge patch must be a JSON object, not {found}")]
    MergeNotObject { found: &'static str },
    #[error("a JSON patch must be an array of operations, not {found}")]
    JsonNotArray { found: &'static str },
    /// An element of a JSON patch is not an operation (missing or unknown `op`,
    /// missing `path` or `value`, a malformed pointer).
    #[error("operation {index}: {reason}")]
    BadOperation { index: usize, reason: String },
    /// A JSON patch operation did not apply to the document.
    #[error("operation {index} ({op} {path}): {reason}")]
    OperationFailed {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// The patch changes `apiVersion`, `kind` or `metadata.name`.
    #[error("{field}: cannot be changed by a patch (was {old}, the patch makes it {new})")]
    Immutable {
        field: &'static str,
        old: String,
        new: String,
    },
}

impl PatchError {
    /// The field an API error should name: the immutable field for
    /// [`PatchError::Immutable`], `patch` (the request field) for the others.
    pub fn field(&self) -> &str {
        match self {
            PatchError::Immutable { field, .. } => field,
            _ => "patch",
        }
    }

    /// The reason without the field, for an API error that names [`PatchError::field`].
    pub fn reason(&self) -> String {
        match self {
            PatchError::Immutable { old, new, .. } => {
                format!("cannot be changed by a patch (was {old}, the patch makes it {new})")
            }
            other => other.to_string(),
        }
    }
}

/// Apply `patch` (JSON text) to `doc`; `doc` itself is left as it is.
pub fn apply_patch(doc: &Value, patch: &str, ty: PatchType) -> Result<Value, PatchError> {
    if patch.trim().is_empty() {
        return Err(PatchError::Empty);
    }
    let p: Value = serde_json::from_str(patch).map_err(syntax_error)?;
    let mut out = doc.clone();
    match ty {
        PatchType::Merge => {
            if !p.is_object() {
                return Err(PatchError::MergeNotObject {
                    found: type_name(&p),
                });
            }
            json_patch::merge(&mut out, &p);
        }
        PatchType::Json => {
            let Value::Array(items) = p else {
                return Err(PatchError::JsonNotArray {
                    found: type_name(&p),
                });
            };
            let ops = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    serde_json::from_value::<PatchOperation>(item).map_err(|e| {
                        PatchError::BadOperation {
                            index,
                            reason: e.to_string().replace('`', "'"),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            // `patch_unsafe` leaves a half-patched document on error; we work on a
            // copy, and it has no undo path that could panic.
            json_patch::patch_unsafe(&mut out, &ops).map_err(|e| op_error(&ops, e))?;
        }
    }
    for (field, pointer) in IDENTITY_FIELDS {
        let (old, new) = (doc.pointer(pointer), out.pointer(pointer));
        if old != new {
            return Err(PatchError::Immutable {
                field,
                old: show(old),
                new: show(new),
            });
        }
    }
    Ok(out)
}

fn syntax_error(e: serde_json::Error) -> PatchError {
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    let message = text
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&text)
        .replace('`', "'");
    PatchError::Syntax {
        message,
        line,
        column,
    }
}

fn op_error(ops: &[PatchOperation], e: json_patch::PatchError) -> PatchError {
    let op = ops.get(e.operation);
    let name = op.map_or("?", op_name);
    let reason = match (&e.kind, op) {
        (PatchErrorKind::TestFailed, _) => "test failed: the value differs".to_string(),
        (PatchErrorKind::InvalidFromPointer, Some(PatchOperation::Move(m))) => {
            format!(
                "nothing at the \"from\" path {}",
                pointer_text(m.from.as_str())
            )
        }
        (PatchErrorKind::InvalidFromPointer, Some(PatchOperation::Copy(c))) => {
            format!(
                "nothing at the \"from\" path {}",
                pointer_text(c.from.as_str())
            )
        }
        (
            PatchErrorKind::InvalidPointer,
            Some(PatchOperation::Add(_) | PatchOperation::Move(_)),
        ) => "the parent of the path does not exist, or an array index is out of range".to_string(),
        (PatchErrorKind::InvalidPointer, _) => "nothing at this path".to_string(),
        (PatchErrorKind::CannotMoveInsideItself, _) => {
            "cannot move a value inside itself".to_string()
        }
        (kind, _) => kind.to_string(),
    };
    PatchError::OperationFailed {
        index: e.operation,
        op: name,
        path: pointer_text(e.path.as_str()),
        reason,
    }
}

fn op_name(op: &PatchOperation) -> &'static str {
    match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// A JSON pointer as shown in messages: the root (empty pointer) reads `""`.
fn pointer_text(p: &str) -> String {
    if p.is_empty() {
        "\"\"".to_string()
    } else {
        p.to_string()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "absent".to_string(),
        Some(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "apiVersion": "tern.dev/v1",
            "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool", "labels": {"zone": "a"}},
            "spec": {
                "cidr": "192.168.0.0/16",
                "natOutgoing": false,
                "allowedUses": ["Workload", "Tunnel"]
            }
        })
    }

    #[test]
    fn merge_patch_sets_and_removes_fields() {
        let out = apply_patch(
            &doc(),
            r#"{"spec":{"natOutgoing": true}, "metadata": {"labels": {"zone": null, "rack": "1"}}}"#,
            PatchType::Merge,
        )
        .expect("merge applies");
        assert_eq!(out["spec"]["natOutgoing"], true);
        assert_eq!(out["spec"]["cidr"], "192.168.0.0/16");
        assert_eq!(out["metadata"]["labels"], json!({"rack": "1"}));
        // Lists are replaced whole.
        let out = apply_patch(
            &doc(),
            r#"{"spec":{"allowedUses":["Tunnel"]}}"#,
            PatchType::Merge,
        )
        .expect("merge applies");
        assert_eq!(out["spec"]["allowedUses"], json!(["Tunnel"]));
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let out = apply_patch(
            &doc(),
            r#"[{"op":"test","path":"/spec/natOutgoing","value":false},
                {"op":"replace","path":"/spec/natOutgoing","value":true},
                {"op":"add","path":"/spec/allowedUses/-","value":"LoadBalancer"},
                {"op":"remove","path":"/metadata/labels/zone"},
                {"op":"copy","from":"/spec/cidr","path":"/metadata/annotations"}]"#,
            PatchType::Json,
        )
        .expect("json patch applies");
        assert_eq!(out["spec"]["natOutgoing"], true);
        assert_eq!(
            out["spec"]["allowedUses"],
            json!(["Workload", "Tunnel", "LoadBalancer"])
        );
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["metadata"]["annotations"], "192.168.0.0/16");
    }

    #[test]
    fn the_input_document_is_left_alone() {
        let d = doc();
        let _ = apply_patch(
            &d,
            r#"[{"op":"replace","path":"/spec/natOutgoing","value":true},{"op":"test","path":"/spec/cidr","value":"x"}]"#,
            PatchType::Json,
        );
        assert_eq!(d, doc());
    }

    #[test]
    fn errors_are_precise() {
        // (patch, type, expected message)
        let cases: &[(&str, PatchType, &str)] = &[
            ("", PatchType::Merge, "the patch is empty"),
            ("  \n", PatchType::Json, "the patch is empty"),
            (
                r#"{"spec": {"natOutgoing": tru}}"#,
                PatchType::Merge,
                "the patch is not valid JSON: expected ident at line 1 column 29",
            ),
            (
                "{\"spec\":\n {\"natOutgoing\": true,}}",
                PatchType::Merge,
                "the patch is not valid JSON: trailing comma at line 2 column 23",
            ),
            (
                "[1, 2]",
                PatchType::Merge,
                "a JSON merge patch must be a JSON object, not an array",
            ),
            (
                r#"{"op":"add"}"#,
                PatchType::Json,
                "a JSON patch must be an array of operations, not an object",
            ),
            (
                r#"[{"op":"test","path":"/spec/cidr","value":"192.168.0.0/16"},{"op":"upsert","path":"/spec/x","value":1}]"#,
                PatchType::Json,
                "operation 1: unknown variant 'upsert', expected one of",
            ),
            (
                r#"[{"path":"/spec/x","value":1}]"#,
                PatchType::Json,
                "operation 0: missing field 'op'",
            ),
            (
                r#"[{"op":"replace","path":"/spec/x"}]"#,
                PatchType::Json,
                "operation 0: missing field 'value'",
            ),
            (
                r#"[{"op":"replace","path":"/spec/natOutgoing","value":true},{"op":"replace","path":"/spec/nope","value":1}]"#,
                PatchType::Json,
                "operation 1 (replace /spec/nope): nothing at this path",
            ),
            (
                r#"[{"op":"remove","path":"/spec/allowedUses/5"}]"#,
                PatchType::Json,
                "operation 0 (remove /spec/allowedUses/5): nothing at this path",
            ),
            (
                r#"[{"op":"add","path":"/status/phase","value":"x"}]"#,
                PatchType::Json,
                "operation 0 (add /status/phase): the parent of the path does not exist",
            ),
            (
                r#"[{"op":"test","path":"/spec/natOutgoing","value":true}]"#,
                PatchType::Json,
                "operation 0 (test /spec/natOutgoing): test failed",
            ),
            (
                r#"[{"op":"move","from":"/spec/nope","path":"/spec/x"}]"#,
                PatchType::Json,
                "operation 0 (move /spec/x): nothing at the \"from\" path /spec/nope",
            ),
            (
                r#"[{"op":"move","from":"/spec","path":"/spec/inner"}]"#,
                PatchType::Json,
                "operation 0 (move /spec/inner): cannot move a value inside itself",
            ),
        ];
        for (patch, ty, want) in cases {
            let e = apply_patch(&doc(), patch, *ty).expect_err(patch);
            assert!(
                e.to_string().starts_with(want),
                "{patch}: got {e:?} / {e}, want {want}"
            );
            assert_eq!(e.field(), "patch", "{patch}");
        }
    }

    #[test]
    fn identity_fields_cannot_change() {
        let cases: &[(&str, PatchType, &str)] = &[
            (
                r#"{"metadata":{"name":"other"}}"#,
                PatchType::Merge,
                r#"metadata.name: cannot be changed by a patch (was "default-ipv4-ippool", the patch makes it "other")"#,
            ),
            (
                r#"{"metadata":null}"#,
                PatchType::Merge,
                r#"metadata.name: cannot be changed by a patch (was "default-ipv4-ippool", the patch makes it absent)"#,
            ),
            (
                r#"{"kind":"BGPPeer"}"#,
                PatchType::Merge,
                r#"kind: cannot be changed by a patch (was "IPPool", the patch makes it "BGPPeer")"#,
            ),
            (
                r#"{"apiVersion":"projectcalico.org/v3"}"#,
                PatchType::Merge,
                "apiVersion: cannot be changed by a patch",
            ),
            (
                r#"[{"op":"replace","path":"/metadata/name","value":"x"}]"#,
                PatchType::Json,
                "metadata.name: cannot be changed by a patch",
            ),
            (
                r#"[{"op":"remove","path":"/kind"}]"#,
                PatchType::Json,
                "kind: cannot be changed by a patch",
            ),
            (
                r#"[{"op":"replace","path":"","value":{}}]"#,
                PatchType::Json,
                "apiVersion: cannot be changed by a patch",
            ),
        ];
        for (patch, ty, want) in cases {
            let e = apply_patch(&doc(), patch, *ty).expect_err(patch);
            assert!(e.to_string().starts_with(want), "{patch}: got {e}");
            assert_ne!(e.field(), "patch", "{patch}");
            assert!(e.reason().starts_with("cannot be changed"), "{patch}");
        }
        // Writing the same value is not a change.
        let out = apply_patch(
            &doc(),
            r#"{"kind":"IPPool","metadata":{"name":"default-ipv4-ippool"}}"#,
            PatchType::Merge,
        )
        .expect("same identity");
        assert_eq!(out, doc());
    }

    #[test]
    fn patch_types_parse() {
        assert_eq!("merge".parse::<PatchType>(), Ok(PatchType::Merge));
        assert_eq!("JSON".parse::<PatchType>(), Ok(PatchType::Json));
        assert!("strategic".parse::<PatchType>().is_err());
        assert_eq!(PatchType::default(), PatchType::Merge);
        assert_eq!(PatchType::Json.to_string(), "json");
    }

    #[test]
    fn no_panics_on_odd_input() {
        let odd = [
            "null",
            "1",
            "\"x\"",
            "[]",
            "{}",
            "[null]",
            "[{\"op\":\"remove\",\"path\":\"\"}]",
            "[{\"op\":\"remove\",\"path\":\"/spec/allowedUses/-\"}]",
            "[{\"op\":\"move\",\"from\":\"/spec/allowedUses/-\",\"path\":\"/x\"}]",
            "[{\"op\":\"add\",\"path\":\"spec\",\"value\":1}]",
            "[{\"op\":\"add\",\"path\":\"/spec/allowedUses/99\",\"value\":1}]",
            "[{\"op\":\"add\",\"path\":\"/spec/cidr/x\",\"value\":1}]",
            "{\"spec\": [1, {\"a\": null}]}",
        ];
        for p in odd {
            for ty in [PatchType::Merge, PatchType::Json] {
                let _ = apply_patch(&doc(), p, ty);
                let _ = apply_patch(&Value::Null, p, ty);
                let _ = apply_patch(&json!([1, 2]), p, ty);
            }
        }
    }
}
