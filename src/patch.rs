//! Patching a resource document: JSON merge patch (RFC 7386, the default, as
//! calicoctl) and JSON patch (RFC 6902).
//!
//! [`apply_patch`] works on the JSON document of a resource (what `get -o json`
//! shows) and returns the patched document; the caller parses, normalizes and
//! validates it like any write. A patch may not change `apiVersion`, `kind` or
//! `metadata.name`. Errors say where: the position of a JSON syntax error, the index,
//! op and path of a JSON patch operation that fails.
//!
//! The patched document is bounded like a document in a request: its size (compact
//! JSON) and its nesting. A JSON patch can grow a document exponentially (`copy` a
//! value into itself, again and again), so the size and depth an operation leads to
//! are worked out from the document before the operation runs, and the first one that
//! would exceed a bound stops the patch: the document never grows past it.

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
    #[error("a JSON patch may have at most {limit} operations; this one has {count}")]
    TooManyOperations { count: usize, limit: usize },
    /// The document would grow past the size limit (at this operation of a JSON patch).
    #[error("{}the patched document would be {size} bytes; the limit is {limit} bytes", at_op(*.index, op, path))]
    TooLarge {
        index: Option<usize>,
        op: &'static str,
        path: String,
        size: usize,
        limit: usize,
    },
    /// The document would nest deeper than the limit.
    #[error("{}the patched document would nest {depth} levels deep; the limit is {limit}", at_op(*.index, op, path))]
    TooDeep {
        index: Option<usize>,
        op: &'static str,
        path: String,
        depth: usize,
        limit: usize,
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

fn at_op(index: Option<usize>, op: &str, path: &str) -> String {
    match index {
        Some(i) => format!("operation {i} ({op} {path}): "),
        None => String::new(),
    }
}

/// Most operations in one JSON patch (as the Kubernetes API server allows).
pub const MAX_PATCH_OPERATIONS: usize = 10_000;

/// Deepest nesting of arrays and objects in a patched document. Resources nest a few
/// levels; the bound keeps every later step (parsing, dropping) clear of deep recursion.
pub const MAX_DEPTH: usize = 64;

/// Apply `patch` (JSON text) to `doc`; `doc` itself is left as it is. The patched
/// document may be at most `max_bytes` long as compact JSON, and nest at most
/// [`MAX_DEPTH`] levels; a JSON patch stops at the first operation that would go past
/// either, before it runs.
pub fn apply_patch(
    doc: &Value,
    patch: &str,
    ty: PatchType,
    max_bytes: usize,
) -> Result<Value, PatchError> {
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
            // A merge patch adds at most itself to the document: no blow-up to stop
            // on the way, only the result to check.
            json_patch::merge(&mut out, &p);
            within_bounds(measure(&out), max_bytes, None, "merge", "")?;
        }
        PatchType::Json => {
            let Value::Array(items) = p else {
                return Err(PatchError::JsonNotArray {
                    found: type_name(&p),
                });
            };
            if items.len() > MAX_PATCH_OPERATIONS {
                return Err(PatchError::TooManyOperations {
                    count: items.len(),
                    limit: MAX_PATCH_OPERATIONS,
                });
            }
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
            let start = measure(&out);
            let (mut size, mut depth) = (start.len, start.depth);
            for (index, op) in ops.iter().enumerate() {
                let (next_size, next_depth) = bounds_after(&out, op, size, depth);
                let next = Measure {
                    len: next_size,
                    depth: next_depth,
                };
                within_bounds(next, max_bytes, Some(index), op_name(op), op_path(op))?;
                // `patch_unsafe` leaves a half-patched document on error; we work on a
                // copy, and it has no undo path that could panic.
                json_patch::patch_unsafe(&mut out, std::slice::from_ref(op)).map_err(|mut e| {
                    e.operation = index;
                    op_error(&ops, e)
                })?;
                (size, depth) = (next_size, next_depth);
            }
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

/// Refuse a document (or the one an operation would lead to) past a bound.
fn within_bounds(
    m: Measure,
    max_bytes: usize,
    index: Option<usize>,
    op: &'static str,
    path: &str,
) -> Result<(), PatchError> {
    let path = if index.is_some() {
        pointer_text(path)
    } else {
        String::new()
    };
    if m.len > max_bytes {
        return Err(PatchError::TooLarge {
            index,
            op,
            path,
            size: m.len,
            limit: max_bytes,
        });
    }
    if m.depth > MAX_DEPTH {
        return Err(PatchError::TooDeep {
            index,
            op,
            path,
            depth: m.depth,
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

/// Size (compact JSON bytes) and nesting depth of a value; a scalar has depth 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Measure {
    len: usize,
    depth: usize,
}

/// Counts what serde_json writes.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compact JSON length of a scalar or a key, escapes included.
fn scalar_len(v: &impl serde::Serialize) -> usize {
    let mut c = Counter(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        // Writing to a counter does not fail; should it, count nothing rather than panic.
        Err(_) => 0,
    }
}

/// Measure a value. Its nesting is bounded (parsed JSON nests at most 128 levels, the
/// document at most [`MAX_DEPTH`]), so the recursion is too.
fn measure(v: &Value) -> Measure {
    match v {
        Value::Array(a) => {
            let mut m = Measure {
                len: 2 + a.len().saturating_sub(1),
                depth: 1,
            };
            for x in a {
                let e = measure(x);
                m.len += e.len;
                m.depth = m.depth.max(e.depth + 1);
            }
            m
        }
        Value::Object(o) => {
            let mut m = Measure {
                len: 2 + o.len().saturating_sub(1),
                depth: 1,
            };
            for (k, x) in o {
                let e = measure(x);
                m.len += scalar_len(k) + 1 + e.len;
                m.depth = m.depth.max(e.depth + 1);
            }
            m
        }
        scalar => Measure {
            len: scalar_len(scalar),
            depth: 0,
        },
    }
}

fn op_path(op: &PatchOperation) -> &str {
    match op {
        PatchOperation::Add(o) => o.path.as_str(),
        PatchOperation::Remove(o) => o.path.as_str(),
        PatchOperation::Replace(o) => o.path.as_str(),
        PatchOperation::Move(o) => o.path.as_str(),
        PatchOperation::Copy(o) => o.path.as_str(),
        PatchOperation::Test(o) => o.path.as_str(),
    }
}

/// A pointer's parent pointer and last token (decoded); None for the root.
fn split(pointer: &str) -> Option<(&str, String)> {
    let at = pointer.rfind('/')?;
    let token = pointer[at + 1..].replace("~1", "/").replace("~0", "~");
    Some((&pointer[..at], token))
}

/// How many levels deep a pointer points.
fn pointer_depth(pointer: &str) -> usize {
    pointer.matches('/').count()
}

/// Bytes that leave the document when the value at `pointer` is removed (its key and a
/// comma included); 0 when there is nothing to remove (the operation will fail).
fn removal(doc: &Value, pointer: &str) -> usize {
    let Some((parent, token)) = split(pointer) else {
        return 0;
    };
    match doc.pointer(parent) {
        Some(Value::Object(o)) => o.get(&token).map_or(0, |v| {
            scalar_len(&token) + 1 + measure(v).len + usize::from(o.len() > 1)
        }),
        Some(Value::Array(a)) => token
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get(i))
            .map_or(0, |v| measure(v).len + usize::from(a.len() > 1)),
        _ => 0,
    }
}

/// The document's size after a value of `len` bytes is put at `pointer` (as `add`
/// does: a new member or element, or in place of the member there). `removed` is the
/// pointer of a value taken out first (`move`) and the bytes that left with it, which
/// `size` no longer counts.
fn size_after_insert(
    doc: &Value,
    pointer: &str,
    len: usize,
    size: usize,
    removed: Option<(&str, usize)>,
) -> usize {
    let Some((parent, token)) = split(pointer) else {
        return len; // the root: the value is the whole document
    };
    // The container loses an element first when the value leaves the same one.
    let removed_here =
        removed.is_some_and(|(from, _)| split(from).is_some_and(|(p, _)| p == parent));
    let framing = |count: usize| usize::from(count.saturating_sub(usize::from(removed_here)) > 0);
    match doc.pointer(parent) {
        Some(Value::Object(o)) => match o.get(&token) {
            Some(old) => {
                let mut old_len = measure(old).len;
                // The member replaced contains the value moved out of it.
                if let Some((from, gone)) = removed
                    && from.starts_with(pointer)
                    && from.as_bytes().get(pointer.len()) == Some(&b'/')
                {
                    old_len = old_len.saturating_sub(gone);
                }
                (size + len).saturating_sub(old_len)
            }
            None => size + scalar_len(&token) + 1 + len + framing(o.len()),
        },
        Some(Value::Array(a)) => size + len + framing(a.len()),
        // The operation will fail: nothing changes.
        _ => size,
    }
}

/// Size and depth of the document after `op`, worked out before it runs. Exact for the
/// size; the depth is an upper bound (a removal does not lower it).
fn bounds_after(doc: &Value, op: &PatchOperation, size: usize, depth: usize) -> (usize, usize) {
    let placed = |pointer: &str, m: Measure| depth.max(pointer_depth(pointer) + m.depth);
    match op {
        PatchOperation::Test(_) => (size, depth),
        PatchOperation::Remove(o) => (size.saturating_sub(removal(doc, o.path.as_str())), depth),
        PatchOperation::Add(o) => {
            let m = measure(&o.value);
            (
                size_after_insert(doc, o.path.as_str(), m.len, size, None),
                placed(o.path.as_str(), m),
            )
        }
        PatchOperation::Replace(o) => {
            let m = measure(&o.value);
            let path = o.path.as_str();
            let size = match doc.pointer(path) {
                _ if path.is_empty() => m.len,
                Some(old) => (size + m.len).saturating_sub(measure(old).len),
                None => size,
            };
            (size, placed(path, m))
        }
        PatchOperation::Copy(o) => match doc.pointer(o.from.as_str()) {
            Some(v) => {
                let m = measure(v);
                (
                    size_after_insert(doc, o.path.as_str(), m.len, size, None),
                    placed(o.path.as_str(), m),
                )
            }
            None => (size, depth),
        },
        PatchOperation::Move(o) => {
            let (from, path) = (o.from.as_str(), o.path.as_str());
            match doc.pointer(from) {
                Some(v) if from != path => {
                    let m = measure(v);
                    let gone = removal(doc, from);
                    let size = size_after_insert(
                        doc,
                        path,
                        m.len,
                        size.saturating_sub(gone),
                        Some((from, gone)),
                    );
                    (size, placed(path, m))
                }
                _ => (size, depth),
            }
        }
    }
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

    const LIMIT: usize = 512 * 1024;

    fn apply(doc: &Value, patch: &str, ty: PatchType) -> Result<Value, PatchError> {
        apply_patch(doc, patch, ty, LIMIT)
    }

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
        let out = apply(
            &doc(),
            r#"{"spec":{"natOutgoing": true}, "metadata": {"labels": {"zone": null, "rack": "1"}}}"#,
            PatchType::Merge,
        )
        .expect("merge applies");
        assert_eq!(out["spec"]["natOutgoing"], true);
        assert_eq!(out["spec"]["cidr"], "192.168.0.0/16");
        assert_eq!(out["metadata"]["labels"], json!({"rack": "1"}));
        // Lists are replaced whole.
        let out = apply(
            &doc(),
            r#"{"spec":{"allowedUses":["Tunnel"]}}"#,
            PatchType::Merge,
        )
        .expect("merge applies");
        assert_eq!(out["spec"]["allowedUses"], json!(["Tunnel"]));
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let out = apply(
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
        let _ = apply(
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
            let e = apply(&doc(), patch, *ty).expect_err(patch);
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
            let e = apply(&doc(), patch, *ty).expect_err(patch);
            assert!(e.to_string().starts_with(want), "{patch}: got {e}");
            assert_ne!(e.field(), "patch", "{patch}");
            assert!(e.reason().starts_with("cannot be changed"), "{patch}");
        }
        // Writing the same value is not a change.
        let out = apply(
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
                let _ = apply(&doc(), p, ty);
                let _ = apply(&Value::Null, p, ty);
                let _ = apply(&json!([1, 2]), p, ty);
            }
        }
    }

    /// Patches of `n` operations that copy the spec into itself: each doubles it.
    fn self_copies(n: usize) -> String {
        let ops: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"op":"copy","from":"/spec","path":"/spec/c{i}"}}"#))
            .collect();
        format!("[{}]", ops.join(","))
    }

    #[test]
    fn measure_is_the_compact_json_length() {
        let values = [
            json!(null),
            json!(true),
            json!(-12.5e3),
            json!(18446744073709551615u64),
            json!("plain"),
            json!("quote \" backslash \\ tab \t control \u{1} unicode é ☃"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {}]], {"a": []}]),
            json!({"k\"ey": {"nested": {"deeper": [null, "x"]}}, "": 0}),
            doc(),
        ];
        for v in values {
            let m = measure(&v);
            assert_eq!(m.len, serde_json::to_vec(&v).expect("json").len(), "{v}");
        }
        assert_eq!(measure(&json!(1)).depth, 0);
        assert_eq!(measure(&json!([])).depth, 1);
        assert_eq!(measure(&json!({"a": [1, {"b": {}}]})).depth, 4);
    }

    #[test]
    fn the_size_an_operation_leads_to_is_exact() {
        let start = json!({
            "a": {"b": {"c": [1, 2, 3], "d": "x"}, "e": {}},
            "f": [],
            "g~/h": {"i\"j": [true]},
            "k": [{"l": 1}]
        });
        let ops = [
            r#"{"op":"add","path":"/f/-","value":"first"}"#,
            r#"{"op":"add","path":"/f/0","value":{"z":[1]}}"#,
            r#"{"op":"add","path":"/a/e/new","value":1}"#,
            r#"{"op":"add","path":"/a/e/more","value":"é"}"#,
            r#"{"op":"add","path":"/a/b/d","value":["replaces", "x"]}"#,
            r#"{"op":"remove","path":"/a/e/new"}"#,
            r#"{"op":"remove","path":"/a/b/c/1"}"#,
            r#"{"op":"replace","path":"/g~0~1h/i\"j/0","value":{"deep":[[]]}}"#,
            r#"{"op":"copy","from":"/a/b","path":"/k/0/copied"}"#,
            r#"{"op":"copy","from":"/a/b","path":"/a/e/more"}"#,
            r#"{"op":"copy","from":"/f","path":"/f/1"}"#,
            r#"{"op":"move","from":"/a/b/c","path":"/a/b/c2"}"#,
            r#"{"op":"move","from":"/f/0","path":"/f/-"}"#,
            r#"{"op":"move","from":"/k/0","path":"/a/e/more"}"#,
            r#"{"op":"move","from":"/a/b/c2/0","path":"/a/b"}"#,
            r#"{"op":"move","from":"/k","path":"/f/0"}"#,
            r#"{"op":"move","from":"/a/e/more/copied","path":"/a/e/more"}"#,
            r#"{"op":"move","from":"/g~0~1h","path":"/g~0~1h"}"#,
            r#"{"op":"move","from":"/g~0~1h/i\"j","path":"/g~0~1h/k~1l"}"#,
            r#"{"op":"test","path":"/a/b","value":1}"#,
            r#"{"op":"remove","path":"/f/0"}"#,
            r#"{"op":"remove","path":"/f/0"}"#,
            r#"{"op":"remove","path":"/f/0"}"#,
            r#"{"op":"add","path":"/f/-","value":null}"#,
            r#"{"op":"move","from":"/f","path":"/f2"}"#,
            r#"{"op":"replace","path":"","value":{"all":"new"}}"#,
            r#"{"op":"add","path":"","value":[1,2]}"#,
        ];
        let mut d = start;
        let mut failed = 0;
        for text in ops {
            let op: PatchOperation = serde_json::from_str(text).expect(text);
            let before = measure(&d);
            let (size, depth) = bounds_after(&d, &op, before.len, before.depth);
            if let Err(e) = json_patch::patch_unsafe(&mut d, std::slice::from_ref(&op)) {
                eprintln!("{text}: {e} on {d}");
                failed += 1;
                continue;
            }
            let after = measure(&d);
            assert_eq!(size, after.len, "{text}: the document is now {d}");
            assert!(depth >= after.depth, "{text}: {depth} < {}", after.depth);
        }
        assert_eq!(failed, 0, "every operation of the sequence applies");
    }

    #[test]
    fn a_patch_of_self_copies_stops_at_the_limit() {
        let patch = self_copies(40);
        assert!(patch.len() < 2100, "a 2 KB patch: {}", patch.len());
        let e = apply_patch(&doc(), &patch, PatchType::Json, LIMIT).expect_err("too large");
        let PatchError::TooLarge {
            index: Some(i),
            size,
            limit,
            ..
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(*limit, LIMIT);
        assert!(*size > LIMIT && *size <= 2 * LIMIT + 64, "{size}");
        // The spec doubles with every copy: the limit is reached after a dozen or so.
        assert!((10..20).contains(i), "stopped at operation {i}");
        assert!(
            e.to_string()
                .ends_with(&format!("; the limit is {LIMIT} bytes")),
            "{e}"
        );
        assert_eq!(e.field(), "patch");
        // Below the limit the same kind of patch applies.
        let out = apply_patch(&doc(), &self_copies(3), PatchType::Json, LIMIT).expect("small");
        assert!(out["spec"]["c2"]["c1"]["c0"].is_object());
    }

    #[test]
    fn merge_patches_and_nesting_are_bounded_too() {
        let big = format!(
            r#"{{"metadata":{{"annotations":{{"a":"{}"}}}}}}"#,
            "x".repeat(2000)
        );
        let e = apply_patch(&doc(), &big, PatchType::Merge, 1000).expect_err("too large");
        assert!(
            e.to_string().starts_with("the patched document would be ")
                && e.to_string().ends_with("; the limit is 1000 bytes"),
            "{e}"
        );
        assert!(apply_patch(&doc(), &big, PatchType::Merge, LIMIT).is_ok());

        // Moving a branch under a deeper path, again and again, nests without growing.
        let mut ops =
            vec![r#"{"op":"add","path":"/spec/n","value":{"a":{"b":{"c":{}}}}}"#.to_string()];
        for _ in 0..30 {
            ops.push(r#"{"op":"move","from":"/spec/n","path":"/spec/allowedUses/0"}"#.into());
            ops.push(r#"{"op":"add","path":"/spec/n","value":{"a":{"b":{"c":{}}}}}"#.into());
            ops.push(
                r#"{"op":"move","from":"/spec/allowedUses/0","path":"/spec/n/a/b/c/d"}"#.into(),
            );
        }
        let patch = format!("[{}]", ops.join(","));
        let e = apply_patch(&doc(), &patch, PatchType::Json, LIMIT).expect_err("too deep");
        assert!(
            matches!(
                e,
                PatchError::TooDeep {
                    limit: MAX_DEPTH,
                    ..
                }
            ),
            "{e:?}"
        );

        let many = format!(
            "[{}]",
            vec![r#"{"op":"test","path":"/kind","value":"IPPool"}"#; MAX_PATCH_OPERATIONS + 1]
                .join(",")
        );
        let e = apply_patch(&doc(), &many, PatchType::Json, LIMIT).expect_err("too many");
        assert_eq!(
            e.to_string(),
            format!(
                "a JSON patch may have at most {MAX_PATCH_OPERATIONS} operations; this one has {}",
                MAX_PATCH_OPERATIONS + 1
            )
        );
    }
}
