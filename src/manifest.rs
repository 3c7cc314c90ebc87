//! Reading manifests: multi-document YAML or JSON, as `ternctl apply -f` and
//! `tern-agent render --input` take them.
//!
//! Scalars are resolved as Calico and Kubernetes resolve them (Go's yaml.v2, YAML 1.1)
//! where the two YAML versions disagree on something a manifest says: an *unquoted*
//! `y`, `yes`, `on` (and `n`, `no`, `off`; lower case, capitalised or upper case) is a
//! boolean, so `route-reflector: yes` is the label value `"true"` in tern as in Calico.
//! A quoted `'yes'` stays a string. Everything else follows the YAML 1.2 core schema,
//! as before: `true`/`false`, `null`/`~`/empty, integers (`0x`, `0o`, `0b` prefixes;
//! `0755` is a string), floats. Mapping keys are taken as written. Anchors and aliases
//! work within a document, and so do merge keys (`<<: *base`), as in yaml.v2.
//!
//! The documents are built from yaml-rust2's event parser, which tells a plain scalar
//! from a quoted one (a serde-level YAML library cannot). This module is tern's one
//! YAML reader and writer: manifests, the controller's configuration file and the
//! tests all go through it.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::model::{FieldError, Resource};

/// Deepest nesting of mappings and sequences a manifest may have.
const MAX_DEPTH: usize = 128;
/// How many nodes aliases may expand to in one file (a guard against alias bombs).
const MAX_ALIAS_NODES: usize = 1_000_000;
/// The prefix of the YAML core schema's tags (`!!str` is `tag:yaml.org,2002:str`).
const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// An error in one document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML (or JSON), or uses YAML that manifests cannot hold. `line`
    /// and `column` (1-based) count from the start of the file.
    #[error("document {index}: not valid YAML or JSON: line {line}, column {column}: {message}")]
    Syntax {
        index: usize,
        line: usize,
        column: usize,
        message: String,
    },
    /// A document is YAML but not a valid resource. (The field is not called `source`:
    /// its text is already part of this message, and error reporters that follow the
    /// source chain would print it twice.)
    #[error("document {index}: {error}")]
    Field { index: usize, error: FieldError },
}

impl ManifestError {
    /// The 1-based index of the document the error is in.
    pub fn index(&self) -> usize {
        match self {
            ManifestError::Syntax { index, .. } | ManifestError::Field { index, .. } => *index,
        }
    }
}

/// Split a file into its documents as JSON values. Empty documents are skipped;
/// `kind: List` (or `kind: <Kind>List`) documents are replaced by their `items`.
pub fn parse_documents_raw(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    for (i, v) in read_yaml(text)?.into_iter().enumerate() {
        let index = i + 1;
        match v {
            Value::Null => continue,
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.contains_key("items") =>
            {
                let Some(Value::Array(items)) = m.get("items") else {
                    return Err(ManifestError::Field {
                        index,
                        error: FieldError::new("items", "must be a list"),
                    });
                };
                out.extend(items.iter().cloned());
            }
            Value::Array(items) => out.extend(items),
            v => out.push(v),
        }
    }
    Ok(out)
}

/// Parse every document into a typed resource.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ManifestError> {
    parse_documents_raw(text)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            Resource::from_value(v).map_err(|error| ManifestError::Field {
                index: i + 1,
                error,
            })
        })
        .collect()
}

/// A JSON value as one YAML document (block style) that reads back as the same value,
/// here and in Calico (YAML 1.1): text that either reader would take for something else
/// (`yes`, `on`, `0755`, `1_000`, `null`, ...) is quoted.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// A scalar or an empty collection, on one line.
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_text(s),
        Value::Array(_) => "[]".to_string(),
        Value::Object(_) => "{}".to_string(),
    }
}

fn is_nested(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

fn write_map(out: &mut String, m: &Map<String, Value>, indent: usize) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_text(k));
        out.push(':');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map(out, inner, indent + 2);
            }
            // Sequence items sit at the key's indentation, as kubectl writes them.
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, indent);
            }
            scalar => {
                out.push(' ');
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        if !is_nested(item) {
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            out.push_str(&inline(item));
            out.push('\n');
            continue;
        }
        // The item's block, indented by two, with its first indentation replaced by "- ".
        let mut block = String::new();
        match item {
            Value::Object(m) => write_map(&mut block, m, indent + 2),
            Value::Array(a) => write_seq(&mut block, a, indent + 2),
            _ => {}
        }
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        out.push_str(block.get(indent + 2..).unwrap_or_default());
    }
}

/// Text as a YAML scalar: plain when every reader takes it for this text, else quoted.
fn yaml_text(s: &str) -> String {
    if !needs_quotes(s) {
        return s.to_string();
    }
    if s.chars().any(|c| c.is_control()) {
        // JSON's escapes are YAML's double-quoted escapes.
        return serde_json::to_string(s).expect("a string always serializes");
    }
    format!("'{}'", s.replace('\'', "''"))
}

fn needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    // Read back by this module as something else, or as a YAML 1.1 octal number.
    if plain_scalar(s.to_string()) != Value::String(s.to_string()) || digits_but_not_number(s) {
        return true;
    }
    // A number to Go's yaml.v2, which also ignores underscores (`1_000`).
    if first.is_ascii_digit() || matches!(first, '+' | '-' | '.') {
        let t: String = s.chars().filter(|&c| c != '_').collect();
        if int(&t).is_some() || t.parse::<f64>().is_ok() {
            return true;
        }
    }
    // YAML syntax: indicators at the start, comments, `key: value`, surrounding blanks,
    // line breaks and other control characters, document markers.
    "-?:,[]{}#&*!|>'\"%@`".contains(first)
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace)
        || s.chars().any(|c| c.is_control())
}

/// Every non-empty document of a YAML (or JSON) stream as a JSON value, as written
/// (no list flattening): for YAML that is not a manifest, such as Kubernetes
/// deployment files.
pub fn documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    Ok(read_yaml(text)?
        .into_iter()
        .filter(|v| !v.is_null())
        .collect())
}

/// One YAML (or JSON) document read into a typed value, the failing field named by
/// its path (`listen: invalid socket address`). An empty text reads as an empty map.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ManifestError> {
    let mut docs = read_yaml(text)?;
    let doc = match docs.len() {
        0 => Value::Object(Map::new()),
        1 => docs.remove(0),
        n => {
            return Err(ManifestError::Field {
                index: 2,
                error: FieldError::new("", format!("one document expected, not {n}")),
            });
        }
    };
    let doc = if doc.is_null() {
        Value::Object(Map::new())
    } else {
        doc
    };
    serde_path_to_error::deserialize(doc).map_err(|e| ManifestError::Field {
        index: 1,
        error: FieldError::new(e.path().to_string(), e.into_inner().to_string()),
    })
}

/// Every document of a YAML stream as a JSON value (`Null` for an empty document).
fn read_yaml(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            let m = *e.marker();
            builder.error(m, e.info().to_string())
        })?;
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart => builder.start_document(),
            Event::DocumentEnd => builder.end_document(),
            Event::Alias(id) => builder.alias(id, mark)?,
            Event::Scalar(text, style, anchor, tag) => {
                builder.scalar(text, style, anchor, tag.as_ref(), mark)?;
            }
            Event::SequenceStart(anchor, tag) => {
                builder.check_collection_tag(tag.as_ref(), "seq", mark)?;
                builder.open(Collection::Seq(Vec::new()), anchor, mark)?;
            }
            Event::MappingStart(anchor, tag) => {
                builder.check_collection_tag(tag.as_ref(), "map", mark)?;
                let map = Collection::Map {
                    map: Map::new(),
                    key: None,
                    merges: Vec::new(),
                };
                builder.open(map, anchor, mark)?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close(mark)?,
        }
    }
    Ok(builder.documents)
}

/// A mapping or sequence being built.
enum Collection {
    Seq(Vec<Value>),
    Map {
        map: Map<String, Value>,
        /// The key read, waiting for its value.
        key: Option<Key>,
        /// Mappings named by merge keys (`<<`), applied when the mapping ends.
        merges: Vec<Map<String, Value>>,
    },
}

enum Key {
    Text(String, Marker),
    /// A plain `<<`: the value's entries are merged into the mapping.
    Merge(Marker),
}

struct Frame {
    collection: Collection,
    /// The anchor id the collection is recorded under when it ends (0: none).
    anchor: usize,
}

/// An anchored value, with its size and depth for the limits on alias expansion.
struct Anchored {
    value: Value,
    nodes: usize,
    depth: usize,
}

/// Builds JSON values from parser events.
#[derive(Default)]
struct Builder {
    documents: Vec<Value>,
    /// The root value of the current document, once complete.
    root: Option<Value>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    alias_nodes: usize,
}

impl Builder {
    fn error(&self, mark: Marker, message: impl Into<String>) -> ManifestError {
        ManifestError::Syntax {
            index: self.documents.len() + 1,
            line: mark.line(),
            column: mark.col() + 1,
            message: message.into(),
        }
    }

    fn start_document(&mut self) {
        // Anchors belong to their document.
        self.anchors.clear();
        self.root = None;
        self.stack.clear();
    }

    fn end_document(&mut self) {
        let root = self.root.take().unwrap_or(Value::Null);
        self.documents.push(root);
    }

    fn scalar(
        &mut self,
        text: String,
        style: TScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        mark: Marker,
    ) -> Result<(), ManifestError> {
        if let Some(Frame {
            collection: Collection::Map {
                key: key @ None, ..
            },
            ..
        }) = self.stack.last_mut()
        {
            // A key: taken as written (a plain `<<` is a merge key).
            *key = Some(
                if style == TScalarStyle::Plain && tag.is_none() && text == "<<" {
                    Key::Merge(mark)
                } else {
                    Key::Text(text.clone(), mark)
                },
            );
            if anchor != 0 {
                let value = self.resolve(text, style, tag, mark)?;
                self.record(anchor, &value);
            }
            return Ok(());
        }
        let value = self.resolve(text, style, tag, mark)?;
        if anchor != 0 {
            self.record(anchor, &value);
        }
        self.deliver(value, mark)
    }

    /// The value of a scalar: plain ones by the rules of the module documentation,
    /// quoted and block ones are strings, tagged ones as their core-schema tag says.
    fn resolve(
        &self,
        text: String,
        style: TScalarStyle,
        tag: Option<&Tag>,
        mark: Marker,
    ) -> Result<Value, ManifestError> {
        let Some(tag) = tag else {
            return Ok(if style == TScalarStyle::Plain {
                plain_scalar(text)
            } else {
                Value::String(text)
            });
        };
        let name = format!("{}{}", tag.handle, tag.suffix);
        // The value itself is not repeated: it may be a secret.
        let bad = |what: &str, _text: &str| {
            self.error(
                mark,
                format!("the value is not {what} (tag {})", shown_tag(tag)),
            )
        };
        match name.strip_prefix(CORE_TAG_PREFIX) {
            // `!` alone is the non-specific tag: a string.
            _ if name == "!" => Ok(Value::String(text)),
            Some("str") => Ok(Value::String(text)),
            Some("null") if null(&text) => Ok(Value::Null),
            Some("null") => Err(bad("null", &text)),
            Some("bool") => yaml_bool(&text)
                .map(Value::Bool)
                .ok_or_else(|| bad("a boolean", &text)),
            Some("int") => int(&text).ok_or_else(|| bad("an integer", &text)),
            Some("float") => float(&text)
                .map(float_value)
                .ok_or_else(|| bad("a number", &text)),
            _ => Err(self.error(mark, unsupported_tag(tag))),
        }
    }

    fn check_collection_tag(
        &self,
        tag: Option<&Tag>,
        expected: &str,
        mark: Marker,
    ) -> Result<(), ManifestError> {
        let Some(tag) = tag else {
            return Ok(());
        };
        let name = format!("{}{}", tag.handle, tag.suffix);
        if name == "!" || name.strip_prefix(CORE_TAG_PREFIX) == Some(expected) {
            Ok(())
        } else {
            Err(self.error(mark, unsupported_tag(tag)))
        }
    }

    fn open(
        &mut self,
        collection: Collection,
        anchor: usize,
        mark: Marker,
    ) -> Result<(), ManifestError> {
        if self.expects_key() {
            return Err(self.error(
                mark,
                "a mapping key must be a scalar, not a mapping or a sequence",
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                mark,
                format!("mappings and sequences are nested more than {MAX_DEPTH} deep"),
            ));
        }
        self.stack.push(Frame { collection, anchor });
        Ok(())
    }

    fn close(&mut self, mark: Marker) -> Result<(), ManifestError> {
        let Some(frame) = self.stack.pop() else {
            return Err(self.error(mark, "unexpected end of a mapping or sequence"));
        };
        let value = match frame.collection {
            Collection::Seq(items) => Value::Array(items),
            Collection::Map {
                mut map, merges, ..
            } => {
                // Keys of the mapping itself win; of several merged mappings, the
                // first one that has a key wins (yaml.v2's rule).
                for merged in merges {
                    for (k, v) in merged {
                        map.entry(k).or_insert(v);
                    }
                }
                Value::Object(map)
            }
        };
        if frame.anchor != 0 {
            self.record(frame.anchor, &value);
        }
        self.deliver(value, mark)
    }

    fn alias(&mut self, id: usize, mark: Marker) -> Result<(), ManifestError> {
        let Some((nodes, depth)) = self.anchors.get(&id).map(|a| (a.nodes, a.depth)) else {
            return Err(self.error(
                mark,
                "alias to an anchor that is not defined before it in this document",
            ));
        };
        if self.stack.len() + depth > MAX_DEPTH {
            return Err(self.error(
                mark,
                format!("mappings and sequences are nested more than {MAX_DEPTH} deep"),
            ));
        }
        self.alias_nodes = self.alias_nodes.saturating_add(nodes);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(self.error(
                mark,
                format!("aliases expand to more than {MAX_ALIAS_NODES} values"),
            ));
        }
        let value = self
            .anchors
            .get(&id)
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if let Some(Frame {
            collection: Collection::Map {
                key: key @ None, ..
            },
            ..
        }) = self.stack.last_mut()
        {
            let text = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null => "null".to_string(),
                Value::Array(_) | Value::Object(_) => {
                    return Err(self.error(
                        mark,
                        "a mapping key must be a scalar, not a mapping or a sequence",
                    ));
                }
            };
            *key = Some(Key::Text(text, mark));
            return Ok(());
        }
        self.deliver(value, mark)
    }

    fn expects_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                collection: Collection::Map { key: None, .. },
                ..
            })
        )
    }

    fn record(&mut self, anchor: usize, value: &Value) {
        let (nodes, depth) = measure(value);
        self.anchors.insert(
            anchor,
            Anchored {
                value: value.clone(),
                nodes,
                depth,
            },
        );
    }

    /// Put a complete value where it belongs: into the collection being built, or as
    /// the document's root.
    fn deliver(&mut self, value: Value, mark: Marker) -> Result<(), ManifestError> {
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(value);
            return Ok(());
        };
        match &mut frame.collection {
            Collection::Seq(items) => items.push(value),
            Collection::Map { map, key, merges } => match key.take() {
                // Keys arrive through `scalar` and `alias`; `open` refuses the others.
                None => {
                    return Err(self.error(mark, "a mapping key must be a scalar"));
                }
                Some(Key::Merge(at)) => match value {
                    Value::Object(m) => merges.push(m),
                    Value::Array(list) if list.iter().all(Value::is_object) => {
                        merges.extend(list.into_iter().filter_map(|v| match v {
                            Value::Object(m) => Some(m),
                            _ => None,
                        }));
                    }
                    _ => {
                        return Err(self.error(
                            at,
                            "the value of a merge key (<<) must be a mapping or a list of \
                             mappings",
                        ));
                    }
                },
                Some(Key::Text(k, at)) => {
                    if map.contains_key(&k) {
                        return Err(self.error(at, format!("duplicate key {k:?}")));
                    }
                    map.insert(k, value);
                }
            },
        }
        Ok(())
    }
}

/// A tag as it is usually written: `!!str` for the core schema's, else in full.
fn shown_tag(tag: &Tag) -> String {
    if tag.handle == CORE_TAG_PREFIX {
        format!("!!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

fn unsupported_tag(tag: &Tag) -> String {
    format!(
        "the tag {} is not supported here (manifests hold plain data)",
        shown_tag(tag)
    )
}

/// Nodes and nesting depth of a value (a scalar is one node of depth 0).
fn measure(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(items) => items.iter().map(measure).fold((1, 1), |(n, d), (cn, cd)| {
            (n.saturating_add(cn), d.max(cd + 1))
        }),
        Value::Object(map) => map.values().map(measure).fold((1, 1), |(n, d), (cn, cd)| {
            (n.saturating_add(cn), d.max(cd + 1))
        }),
        _ => (1, 0),
    }
}

/// A plain (unquoted, untagged) scalar: null, boolean (YAML 1.1's words too), integer,
/// float, or else a string.
fn plain_scalar(text: String) -> Value {
    if null(&text) {
        return Value::Null;
    }
    if let Some(b) = yaml_bool(&text) {
        return Value::Bool(b);
    }
    if let Some(n) = int(&text) {
        return n;
    }
    if !digits_but_not_number(&text)
        && let Some(f) = float(&text)
    {
        return float_value(f);
    }
    Value::String(text)
}

fn null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// YAML 1.2's booleans and YAML 1.1's (as Go's yaml.v2 reads them).
fn yaml_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" | "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            Some(true)
        }
        "false" | "False" | "FALSE" | "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

/// Leading zeros followed by digits only: a string in YAML 1.2 (`0755`, `-012`).
fn digits_but_not_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// An integer of the YAML 1.2 core schema: decimal with an optional sign, or `0x`,
/// `0o`, `0b` with an optional `-`. Integers beyond 64 bits are left to [`float`].
fn int(s: &str) -> Option<Value> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = digits.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = digits.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = digits.strip_prefix("0b") {
        (2, d)
    } else {
        if digits_but_not_number(s) {
            return None;
        }
        (10, digits)
    };
    // from_str_radix takes a sign of its own: the sign was read above.
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(Value::Number(Number::from(magnitude)));
    }
    let n = 0i64.checked_sub_unsigned(magnitude)?;
    Some(Value::Number(Number::from(n)))
}

/// A float: `1.5`, `-2e3`, `.5`, `.inf`, `-.inf`, `.nan` (and their capitalised forms).
fn float(s: &str) -> Option<f64> {
    let unsigned = match s.strip_prefix('+') {
        Some(u) if u.starts_with(['+', '-']) => return None,
        Some(u) => u,
        None => s,
    };
    match unsigned {
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    // Rust also reads `inf` and `nan`, which YAML does not: only finite values here.
    unsigned.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A float as JSON: JSON has no infinity or NaN, which become null.
fn float_value(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let mut docs = read_yaml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(docs.len(), 1, "{text:?}");
        docs.remove(0)
    }

    fn syntax(text: &str) -> (usize, usize, usize, String) {
        match read_yaml(text) {
            Err(ManifestError::Syntax {
                index,
                line,
                column,
                message,
            }) => (index, line, column, message),
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn multi_document_and_lists() {
        let text = "---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n---\n---\nkind: IPPoolList\napiVersion: projectcalico.org/v3\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidr: 10.1.0.0/16}\n";
        let docs = parse_documents(text).expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name(), "b");
        let e = parse_documents_raw("kind: List\nitems: {a: 1}\n").expect_err("items");
        assert_eq!(e.to_string(), "document 1: items: must be a list");
        assert_eq!(
            parse_documents_raw("[{a: 1}, {b: 2}]\n---\n{c: 3}\n").expect("top-level list"),
            vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]
        );
        assert!(parse_documents_raw("").expect("empty").is_empty());
        assert!(
            parse_documents_raw("# nothing\n---\n...\n")
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn errors_say_which_document() {
        let text = "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/33}\n";
        let e = parse_documents(text).expect_err("bad cidr");
        assert_eq!(e.index(), 2);
        assert!(e.to_string().starts_with("document 2: spec.cidr:"), "{e}");
        let e = parse_documents("a: [").expect_err("syntax");
        assert!(matches!(e, ManifestError::Syntax { index: 1, .. }));
    }

    #[test]
    fn field_errors_are_said_once() {
        let e = parse_documents(
            "apiVersion: v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n",
        )
        .expect_err("v1 pool");
        // The FieldError is part of the message, not a source that reporters print again.
        assert!(std::error::Error::source(&e).is_none());
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown,
            "document 1: apiVersion: \"v1\" is not supported for IPPool (use tern.dev/v1 or \
             projectcalico.org/v3; v1 only for a Secret)"
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let (index, line, column, message) = syntax("a: 1\n---\nb: 2\nc: [1, 2\nd: 3\n");
        assert_eq!((index, line), (2, 5), "{message}");
        assert!(column >= 1, "{column}");
        let e = read_yaml("a: 1\n---\nb: 2\nc: [1, 2\nd: 3\n").expect_err("syntax");
        assert!(
            e.to_string()
                .starts_with("document 2: not valid YAML or JSON: line 5, column"),
            "{e}"
        );
        let (index, line, column, message) = syntax("a: 1\nb:\n  c: 2\n  c: 3\n");
        assert_eq!((index, line, column), (1, 4, 3));
        assert_eq!(message, "duplicate key \"c\"");
        let (_, line, _, message) = syntax("a: *nope\n");
        assert_eq!(line, 1);
        assert!(message.contains("anchor"), "{message}");
    }

    #[test]
    fn yaml11_booleans_when_plain_strings_when_quoted() {
        for word in [
            "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE",
        ] {
            assert_eq!(one(&format!("a: {word}\n")), json!({"a": true}), "{word}");
            assert_eq!(one(&format!("a: '{word}'\n")), json!({"a": word}), "{word}");
            assert_eq!(
                one(&format!("a: \"{word}\"\n")),
                json!({"a": word}),
                "{word}"
            );
        }
        for word in [
            "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE",
        ] {
            assert_eq!(one(&format!("a: {word}\n")), json!({"a": false}), "{word}");
            assert_eq!(one(&format!("a: '{word}'\n")), json!({"a": word}), "{word}");
        }
        // Other spellings are strings, as in yaml.v2.
        for word in ["yES", "oN", "Off-peak", "nope", "yes please", "t", "f"] {
            assert_eq!(one(&format!("a: {word}\n")), json!({"a": word}), "{word}");
        }
        // Block scalars are strings too; keys are taken as written.
        assert_eq!(one("a: |\n  yes\n"), json!({"a": "yes\n"}));
        assert_eq!(
            one("yes: no\non: 'off'\n"),
            json!({"yes": false, "on": "off"})
        );
        // Tags say what they say.
        assert_eq!(
            one("a: !!str yes\nb: !!bool 'on'\n"),
            json!({"a": "yes", "b": true})
        );
    }

    #[test]
    fn labels_read_as_calico_reads_them() {
        let docs = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: rr1\n  labels:\n    route-reflector: yes\n    quoted: 'yes'\n    off-label: off\n",
        )
        .expect("node");
        let labels = docs[0].metadata().labels.clone();
        assert_eq!(labels["route-reflector"], "true");
        assert_eq!(labels["quoted"], "yes");
        assert_eq!(labels["off-label"], "false");
    }

    #[test]
    fn core_schema_scalars() {
        let v = one(
            "n1: null\nn2: ~\nn3:\nn4: Null\ni1: 12\ni2: -12\ni3: +12\ni4: 0x1F\ni5: 0o17\ni6: 0b101\n\
             i7: -0x10\ni8: 18446744073709551615\ni9: -9223372036854775808\n\
             s1: 0755\ns2: -012\ns3: 1_000\ns4: 0x\ns5: inf\ns6: nan\ns7: 10.0.0.0/16\ns8: 1:20\n\
             s9: +-1\ns10: 0x+1\n\
             f1: 1.5\nf2: -2e3\nf3: .5\nf4: 1.10\nf5: .inf\nf6: .NaN\nf7: 18446744073709551616\n",
        );
        let expected = json!({
            "n1": null, "n2": null, "n3": null, "n4": null,
            "i1": 12, "i2": -12, "i3": 12, "i4": 31, "i5": 15, "i6": 5, "i7": -16,
            "i8": 18446744073709551615u64, "i9": i64::MIN,
            "s1": "0755", "s2": "-012", "s3": "1_000", "s4": "0x", "s5": "inf", "s6": "nan",
            "s7": "10.0.0.0/16", "s8": "1:20", "s9": "+-1", "s10": "0x+1",
            "f1": 1.5, "f2": -2000.0, "f3": 0.5, "f4": 1.1, "f5": null, "f6": null,
            "f7": 18446744073709551616.0,
        });
        assert_eq!(v, expected);
        assert!(v["i1"].is_u64() && v["i2"].is_i64() && v["f4"].is_f64());
    }

    #[test]
    fn nested_maps_lists_and_json() {
        let v = one(
            "spec:\n  exportV4:\n    - action: Accept\n      cidr: 10.0.0.0/8\n    - {action: Reject}\n  flags: [yes, 'no', 3]\n  empty: {}\n  none: []\n",
        );
        assert_eq!(
            v,
            json!({"spec": {
                "exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8"}, {"action": "Reject"}],
                "flags": [true, "no", 3],
                "empty": {},
                "none": [],
            }})
        );
        // JSON, as `ternctl get -o json` prints it (tabs and all), is YAML.
        let json_text = "{\n\t\"apiVersion\": \"tern.dev/v1\",\n\t\"kind\": \"Node\",\n\t\"metadata\": {\"name\": \"n\", \"labels\": {\"a\": \"yes\"}},\n\t\"spec\": {\"bgp\": {\"asNumber\": 64512}}\n}\n";
        let docs = parse_documents_raw(json_text).expect("json");
        assert_eq!(docs[0]["metadata"]["labels"]["a"], "yes");
        assert_eq!(docs[0]["spec"]["bgp"]["asNumber"], 64512);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = one(
            "base: &base {asNumber: 64512, keepaliveTime: 20s}\nlabel: &on yes\n\
             a: *base\nb:\n  <<: *base\n  asNumber: 64513\nc: *on\n\
             d:\n  <<: [{x: 1, y: 1}, {x: 2, z: 2}]\n  y: 3\n",
        );
        assert_eq!(v["a"], json!({"asNumber": 64512, "keepaliveTime": "20s"}));
        assert_eq!(v["b"], json!({"asNumber": 64513, "keepaliveTime": "20s"}));
        assert_eq!(v["c"], json!(true));
        assert_eq!(v["d"], json!({"x": 1, "y": 3, "z": 2}));
        // A quoted '<<' is an ordinary key.
        assert_eq!(one("'<<': 1\n"), json!({"<<": 1}));
        // Anchors do not reach into the next document.
        let (index, ..) = syntax("a: &x 1\n---\nb: *x\n");
        assert_eq!(index, 2);
        let (_, _, _, message) = syntax("a:\n  <<: 1\n");
        assert!(message.contains("merge key"), "{message}");
    }

    #[test]
    fn written_yaml_reads_back_the_same() {
        let tricky = [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "N",
            "true",
            "False",
            "null",
            "~",
            "",
            "12",
            "-3",
            "0x1F",
            "0755",
            "1_000",
            "1.5",
            ".inf",
            "1e3",
            "+1",
            "-",
            "--- x",
            "...",
            "!has(routeReflector)",
            "rack == 'r1'",
            "a: b",
            "a #b",
            "a:",
            " a",
            "a ",
            "'quoted'",
            "\"dq\"",
            "line\nbreak",
            "tab\there",
            "*ref",
            "&anchor",
            "%x",
            "@x",
            "`x`",
            "{a}",
            "[a]",
            "a, b",
            "- item",
            "? q",
            "| x",
            "> x",
            "#c",
            "all()",
            "10.0.0.0/16",
            "fd00::/48",
            "1.10",
            "64512:300:100",
            "200:1",
            "émoji ✓",
        ];
        let mut labels = Map::new();
        let mut list = Vec::new();
        for (i, t) in tricky.iter().enumerate() {
            labels.insert(format!("k{i}"), json!(t));
            labels.insert((*t).to_string(), json!(i));
            list.push(json!(t));
        }
        let v = json!({
            "apiVersion": "tern.dev/v1",
            "kind": "Thing",
            "metadata": {"name": "x", "labels": labels},
            "spec": {
                "list": list,
                "nested": [[1, [2, {}]], {"a": [], "b": {"c": [{"d": null}]}}, []],
                "numbers": [0, -1, 1.5, 18446744073709551615u64],
                "bools": [true, false],
                "empty": {},
            },
        });
        let text = to_yaml(&v);
        assert_eq!(one(&text), v, "{text}");
        for scalar in [json!("yes"), json!(3), json!(null), json!([]), json!({})] {
            assert_eq!(one(&to_yaml(&scalar)), scalar);
        }
        assert_eq!(to_yaml(&json!({"a": "yes", "b": "x"})), "a: 'yes'\nb: x\n");
    }

    #[test]
    fn written_yaml_is_block_style() {
        // Nothing ambiguous here: plain block style, sequences at their key's indentation.
        let v = json!({
            "apiVersion": "tern.dev/v1",
            "kind": "IPPoolList",
            "metadata": {"resourceVersion": "41"},
            "items": [{
                "apiVersion": "tern.dev/v1",
                "kind": "IPPool",
                "metadata": {"name": "default-ipv4-ippool", "labels": {"team": "a"}},
                "spec": {
                    "cidr": "192.168.0.0/16",
                    "blockSize": 26,
                    "natOutgoing": true,
                    "nodeSelector": "!has(edge)",
                    "allowedUses": ["Workload", "Tunnel"],
                    "empty": [],
                },
            }],
        });
        let want = "apiVersion: tern.dev/v1
items:
- apiVersion: tern.dev/v1
  kind: IPPool
  metadata:
    labels:
      team: a
    name: default-ipv4-ippool
  spec:
    allowedUses:
    - Workload
    - Tunnel
    blockSize: 26
    cidr: 192.168.0.0/16
    empty: []
    natOutgoing: true
    nodeSelector: '!has(edge)'
kind: IPPoolList
metadata:
  resourceVersion: '41'
";
        assert_eq!(to_yaml(&v), want);
        assert_eq!(one(want), v);
    }

    #[test]
    fn typed_documents() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct C {
            port: Option<u16>,
            on: Option<bool>,
        }
        assert_eq!(
            from_str::<C>("port: 8080\non: yes\n").expect("config"),
            C {
                port: Some(8080),
                on: Some(true)
            }
        );
        assert_eq!(
            from_str::<C>("").expect("empty"),
            C {
                port: None,
                on: None
            }
        );
        let e = from_str::<C>("port: x\n").expect_err("bad port");
        assert!(e.to_string().contains("port"), "{e}");
        assert!(from_str::<C>("a: 1\n---\nb: 2\n").is_err());
        assert_eq!(
            documents("a: 1\n---\n---\nkind: List\nitems: []\n")
                .expect("docs")
                .len(),
            2
        );
    }

    #[test]
    fn limits_and_unsupported_yaml() {
        // An alias bomb stops at the limit instead of eating memory.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                std::iter::repeat_n(prev.as_str(), 10)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let (_, _, _, message) = syntax(&bomb);
        assert!(message.contains("aliases expand"), "{message}");
        // Deep nesting stops at the limit.
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let (_, _, _, message) = syntax(&deep);
        assert!(message.contains("nested"), "{message}");
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        read_yaml(&ok).expect("at the limit");
        // Complex keys and application tags are refused with a reason.
        let (_, _, _, message) = syntax("? [a]\n: 1\n");
        assert!(message.contains("key must be a scalar"), "{message}");
        let (_, _, _, message) = syntax("a: !Thing x\n");
        assert!(message.contains("tag !Thing"), "{message}");
        let (_, _, _, message) = syntax("a: !!int x\n");
        assert!(message.contains("not an integer"), "{message}");
        // Nothing here panics on broken input.
        for text in [
            "]",
            "}",
            "a: [}",
            "- a\nb: c",
            "a: 'x",
            "\"",
            "&a",
            "*",
            "a: &a",
            "? ",
            ": ",
            "--- |\n  x\n y",
            "\t- a",
            "a:\n\t- b",
            "%YAML 1.3\n---\na",
            "[a, *b]",
            "{a: 1, a: 2}",
        ] {
            let _ = parse_documents_raw(text);
        }
    }
}
