//! Reading manifests: multi-document YAML or JSON, as `ternctl apply -f` and
//! `tern-agent render --input` take them.

use serde::Deserialize;
use serde_json::Value;

use crate::model::{FieldError, Resource};

/// An error in one document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML or JSON: {message}")]
    Syntax { index: usize, message: String },
    #[error("document {index}: {source}")]
    Field { index: usize, source: FieldError },
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
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let v = Value::deserialize(doc).map_err(|e| ManifestError::Syntax {
            index,
            message: e.to_string(),
        })?;
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
                        source: FieldError::new("items", "must be a list"),
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
            Resource::from_value(v).map_err(|source| ManifestError::Field {
                index: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_lists() {
        let text = "---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n---\n---\nkind: IPPoolList\napiVersion: projectcalico.org/v3\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidr: 10.1.0.0/16}\n";
        let docs = parse_documents(text).expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name(), "b");
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
}
