//! Label selectors in Calico's syntax.
//!
//! ```text
//! all()                     every object
//! global()                  same as all() (accepted for Calico compatibility)
//! has(k)  !has(k)           label present / absent
//! k == 'v'   k != 'v'       equality (single or double quotes)
//! k in {'a','b'}            membership; `not in` negates
//! k contains 'x'  k starts with 'x'  k ends with 'x'
//! !expr   a && b   a || b   ( ... )
//! ```
//!
//! An empty selector matches everything, as in Calico. A parse error names the byte
//! position where parsing stopped. A [`Selector`] keeps its source text so that it
//! serializes back exactly as written.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parse error: what was expected and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {source_text:?}: {message} at position {position}")]
pub struct SelectorError {
    pub source_text: String,
    pub message: String,
    /// Byte offset into the selector text (0-based).
    pub position: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    /// `a && b && ...`, flat: a long chain costs no recursion.
    And(Vec<Expr>),
    /// `a || b || ...`, flat.
    Or(Vec<Expr>),
}

impl Expr {
    fn eval(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::All => true,
            Expr::Has(k) => labels.contains_key(k),
            Expr::Eq(k, v) => labels.get(k) == Some(v),
            // Calico: `k != 'v'` is true when the label is absent.
            Expr::Ne(k, v) => labels.get(k) != Some(v),
            Expr::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Expr::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Expr::Contains(k, v) => labels.get(k).is_some_and(|l| l.contains(v.as_str())),
            Expr::StartsWith(k, v) => labels.get(k).is_some_and(|l| l.starts_with(v.as_str())),
            Expr::EndsWith(k, v) => labels.get(k).is_some_and(|l| l.ends_with(v.as_str())),
            Expr::Not(e) => !e.eval(labels),
            Expr::And(es) => es.iter().all(|e| e.eval(labels)),
            Expr::Or(es) => es.iter().any(|e| e.eval(labels)),
        }
    }
}

/// A parsed label selector that remembers its source text.
#[derive(Clone)]
pub struct Selector {
    text: String,
    expr: Expr,
}

impl Selector {
    /// Parse a selector. Empty or blank text means `all()`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError {
                source_text: shown(text),
                message: format!(
                    "longer than {MAX_SELECTOR_LEN} bytes ({} bytes)",
                    text.len()
                ),
                position: MAX_SELECTOR_LEN,
            });
        }
        let expr = if text.trim().is_empty() {
            Expr::All
        } else {
            Parser::new(text).parse()?
        };
        Ok(Selector {
            text: text.to_string(),
            expr,
        })
    }

    /// The selector that matches everything (`all()`).
    pub fn all() -> Self {
        Selector {
            text: "all()".to_string(),
            expr: Expr::All,
        }
    }

    /// True when the labels satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.eval(labels)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for an empty selector (which matches everything but was not written as `all()`).
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// True when this selector matches every set of labels by construction.
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }
}

impl Default for Selector {
    /// The empty selector (matches everything; serializes as an empty string).
    fn default() -> Self {
        Selector {
            text: String::new(),
            expr: Expr::All,
        }
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({:?})", self.text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Selector {}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Not,
    And,
    Or,
    EqEq,
    NotEq,
    End,
}

/// The longest selector accepted, in bytes (Calico sets none; this bounds the work a
/// request can cause).
pub const MAX_SELECTOR_LEN: usize = 16 * 1024;

/// The deepest nesting of `!` and `( )` accepted: the parser recurses once per level.
pub const MAX_SELECTOR_DEPTH: usize = 64;

/// How much of a selector an error quotes: errors travel in gRPC status headers, which
/// peers limit (16 KiB by default), so a long selector is quoted up to this many bytes.
const MAX_QUOTED: usize = 128;

/// The selector as an error quotes it: whole, or its start and "...".
fn shown(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return s.to_string();
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    peeked: Option<(Tok, usize, usize)>,
    /// Current nesting of `!` and `(`.
    depth: usize,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            peeked: None,
            depth: 0,
        }
    }

    fn err<T>(&self, message: impl Into<String>, position: usize) -> Result<T, SelectorError> {
        Err(SelectorError {
            source_text: shown(self.src),
            message: message.into(),
            position,
        })
    }

    /// Lex the next token: (token, start, end).
    fn lex(&mut self) -> Result<(Tok, usize, usize), SelectorError> {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Ok((Tok::End, start, start));
        };
        let two = |p: &mut Self, t: Tok| {
            p.pos += 2;
            Ok((t, start, start + 2))
        };
        let one = |p: &mut Self, t: Tok| {
            p.pos += 1;
            Ok((t, start, start + 1))
        };
        match c {
            '(' => one(self, Tok::LParen),
            ')' => one(self, Tok::RParen),
            '{' => one(self, Tok::LBrace),
            '}' => one(self, Tok::RBrace),
            ',' => one(self, Tok::Comma),
            '&' if rest.starts_with("&&") => two(self, Tok::And),
            '|' if rest.starts_with("||") => two(self, Tok::Or),
            '=' if rest.starts_with("==") => two(self, Tok::EqEq),
            '!' if rest.starts_with("!=") => two(self, Tok::NotEq),
            '!' => one(self, Tok::Not),
            '\'' | '"' => {
                let body = &rest[1..];
                match body.find(c) {
                    Some(end) => {
                        let s = body[..end].to_string();
                        self.pos += end + 2;
                        Ok((Tok::Str(s), start, self.pos))
                    }
                    None => self.err("unterminated string", start),
                }
            }
            c if is_label_char(c) => {
                let len = rest
                    .char_indices()
                    .find(|(_, ch)| !is_label_char(*ch))
                    .map_or(rest.len(), |(i, _)| i);
                self.pos += len;
                Ok((Tok::Ident(rest[..len].to_string()), start, self.pos))
            }
            _ => self.err(format!("unexpected character {c:?}"), start),
        }
    }

    fn peek(&mut self) -> Result<&(Tok, usize, usize), SelectorError> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        Ok(self.peeked.as_ref().expect("peeked was just filled"))
    }

    fn next(&mut self) -> Result<(Tok, usize, usize), SelectorError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), SelectorError> {
        let (t, s, _) = self.next()?;
        if t == want {
            Ok(())
        } else {
            self.err(format!("expected {what}"), s)
        }
    }

    fn parse(mut self) -> Result<Expr, SelectorError> {
        let e = self.parse_or()?;
        let (t, s, _) = self.next()?;
        if t != Tok::End {
            return self.err("expected && or || or end of selector", s);
        }
        Ok(e)
    }

    fn parse_or(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.parse_and()?];
        while self.peek()?.0 == Tok::Or {
            self.next()?;
            terms.push(self.parse_and()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::Or(terms)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, SelectorError> {
        let mut terms = vec![self.parse_unary()?];
        while self.peek()?.0 == Tok::And {
            self.next()?;
            terms.push(self.parse_unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::And(terms)
        })
    }

    /// Enter one level of `!` or `(`, refusing to go deeper than the limit.
    fn nested<T>(
        &mut self,
        at: usize,
        f: impl FnOnce(&mut Self) -> Result<T, SelectorError>,
    ) -> Result<T, SelectorError> {
        if self.depth >= MAX_SELECTOR_DEPTH {
            return self.err(
                format!("nested deeper than {MAX_SELECTOR_DEPTH} levels of '!' and '('"),
                at,
            );
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn parse_unary(&mut self) -> Result<Expr, SelectorError> {
        let (t, s, _) = self.next()?;
        match t {
            Tok::Not => self.nested(s, |p| Ok(Expr::Not(Box::new(p.parse_unary()?)))),
            Tok::LParen => self.nested(s, |p| {
                let e = p.parse_or()?;
                p.expect(Tok::RParen, "')'")?;
                Ok(e)
            }),
            Tok::Ident(id) => self.parse_term(id, s),
            Tok::End => self.err("expected an expression", s),
            _ => self.err("expected a label, has(), all() or '!'", s),
        }
    }

    fn parse_term(&mut self, id: String, start: usize) -> Result<Expr, SelectorError> {
        // Function forms: all(), global(), has(label).
        if self.peek()?.0 == Tok::LParen && matches!(id.as_str(), "all" | "global" | "has") {
            self.next()?;
            if id == "has" {
                let (t, s, _) = self.next()?;
                let Tok::Ident(label) = t else {
                    return self.err("expected a label name", s);
                };
                self.expect(Tok::RParen, "')'")?;
                return Ok(Expr::Has(label));
            }
            self.expect(Tok::RParen, "')'")?;
            return Ok(Expr::All);
        }
        let (t, s, _) = self.next()?;
        match t {
            Tok::EqEq => Ok(Expr::Eq(id, self.string()?)),
            Tok::NotEq => Ok(Expr::Ne(id, self.string()?)),
            Tok::Ident(op) if op == "in" => Ok(Expr::In(id, self.set()?)),
            Tok::Ident(op) if op == "contains" => Ok(Expr::Contains(id, self.string()?)),
            Tok::Ident(op) if op == "not" => {
                let (t, s, _) = self.next()?;
                if t != Tok::Ident("in".into()) {
                    return self.err("expected 'in' after 'not'", s);
                }
                Ok(Expr::NotIn(id, self.set()?))
            }
            Tok::Ident(op) if op == "starts" || op == "ends" => {
                let (t, s2, _) = self.next()?;
                if t != Tok::Ident("with".into()) {
                    return self.err(format!("expected 'with' after '{op}'"), s2);
                }
                let v = self.string()?;
                Ok(if op == "starts" {
                    Expr::StartsWith(id, v)
                } else {
                    Expr::EndsWith(id, v)
                })
            }
            _ => {
                let _ = start;
                self.err(
                    "expected ==, !=, in, not in, contains, starts with or ends with",
                    s,
                )
            }
        }
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        let (t, s, _) = self.next()?;
        match t {
            Tok::Str(v) => Ok(v),
            _ => self.err("expected a quoted string", s),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect(Tok::LBrace, "'{'")?;
        let mut out = Vec::new();
        if self.peek()?.0 == Tok::RBrace {
            self.next()?;
            return Ok(out);
        }
        loop {
            out.push(self.string()?);
            let (t, s, _) = self.next()?;
            match t {
                Tok::Comma => continue,
                Tok::RBrace => return Ok(out),
                _ => return self.err("expected ',' or '}'", s),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates_every_form() {
        let l = labels(&[("zone", "a"), ("rack", "r1"), ("routeReflector", "true")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("global()", true),
            ("has(zone)", true),
            ("!has(zone)", false),
            ("has(missing)", false),
            ("zone == 'a'", true),
            ("zone == \"a\"", true),
            ("zone != 'a'", false),
            ("missing != 'a'", true),
            ("zone in {'a', 'b'}", true),
            ("zone in {}", false),
            ("zone not in {'a'}", false),
            ("missing not in {'a'}", true),
            ("rack contains '1'", true),
            ("rack starts with 'r'", true),
            ("rack ends with 'x'", false),
            ("has(zone) && rack == 'r1'", true),
            ("has(zone) && rack == 'r2'", false),
            ("zone == 'b' || rack == 'r1'", true),
            ("!(zone == 'b' || rack == 'r2')", true),
            ("has(routeReflector)", true),
            ("a.b/c-d_e == 'x' || all()", true),
            // && binds tighter than ||
            ("zone == 'b' && has(zone) || has(rack)", true),
            ("has(rack) || zone == 'b' && has(zone)", true),
        ];
        for (text, want) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.matches(&l), want, "{text}");
            assert_eq!(s.as_str(), text);
        }
    }

    #[test]
    fn errors_name_the_position() {
        let cases = [
            ("has(zone", 8, "expected ')'"),
            ("zone = 'a'", 5, "unexpected character '='"),
            ("zone == a", 8, "expected a quoted string"),
            ("zone == 'a", 8, "unterminated string"),
            ("zone in {'a' 'b'}", 13, "expected ',' or '}'"),
            ("has(a) &&", 9, "expected an expression"),
            ("has(a) has(b)", 7, "expected && or || or end of selector"),
            ("zone not 'a'", 9, "expected 'in' after 'not'"),
            ("(has(a)", 7, "expected ')'"),
            ("zone", 4, "expected ==, !=, in"),
            ("&& has(a)", 0, "expected a label"),
        ];
        for (text, pos, msg) in cases {
            let e = Selector::parse(text).expect_err(text);
            assert_eq!(e.position, pos, "{text}: {e}");
            assert!(e.message.starts_with(msg), "{text}: {e}");
            assert!(e.to_string().contains(&format!("at position {pos}")));
        }
    }

    #[test]
    fn hostile_selectors_are_refused_not_overflowing_the_stack() {
        // Nesting: 64 levels parse, 65 do not; far more is refused at the limit.
        let ok = format!("{}has(a){}", "(".repeat(64), ")".repeat(64));
        assert!(
            Selector::parse(&ok)
                .expect("64 levels")
                .matches(&labels(&[("a", "")]))
        );
        let bangs = format!("{}has(a)", "!".repeat(64));
        assert!(
            Selector::parse(&bangs)
                .expect("64 levels")
                .matches(&labels(&[("a", "")]))
        );
        for deep in [
            format!("{}has(a){}", "(".repeat(65), ")".repeat(65)),
            format!("{}has(a)", "!(".repeat(5000)),
        ] {
            let e = Selector::parse(&deep).expect_err("too deep");
            assert!(e.message.starts_with("nested deeper than 64"), "{e}");
            assert_eq!(e.position, 64, "{e}");
        }
        // Length: refused before parsing, and the error does not echo it all.
        let long = "(".repeat(200_000);
        let e = Selector::parse(&long).expect_err("too long");
        assert!(
            e.message.contains("longer than 16384 bytes"),
            "{}",
            e.message
        );
        assert!(e.to_string().len() < 300);
        // A long flat chain (within the length limit) parses and evaluates.
        let chain = vec!["has(x)"; 1500].join(" || ") + " || has(a)";
        assert!(chain.len() < MAX_SELECTOR_LEN);
        let s = Selector::parse(&chain).expect("a flat chain");
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("b", "")])));
        let chain = vec!["!has(x)"; 1000].join(" && ");
        assert!(
            Selector::parse(&chain)
                .expect("a flat chain")
                .matches(&labels(&[]))
        );
    }

    #[test]
    fn serde_round_trip_keeps_text() {
        let s: Selector = serde_json::from_str("\"has(x) && y == 'z'\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&s).expect("serializes"),
            "\"has(x) && y == 'z'\""
        );
        let e = serde_json::from_str::<Selector>("\"has(\"").expect_err("invalid");
        assert!(e.to_string().contains("at position 4"), "{e}");
    }
}
