//! Calico's label selector language: parsing, evaluation and canonical printing.
//!
//! The grammar is Calico's (libcalico-go `selector/tokenizer` and `parser`), reproduced exactly:
//!
//! ```text
//! or      := and ( "||" and )*
//! and     := op ( "&&" op )*
//! op      := "!"* ( "has(" key ")" | "all()" | "global()" | "(" or ")"
//!                 | key ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!                 | key ( "in" | "not in" ) "{" [ string ( "," string )* [","] ] "}" )
//! key     := [A-Za-z0-9_./-]{1,512}
//! string  := '...' | "..."        (no escapes)
//! ```
//!
//! Only space and tab are whitespace. The empty selector means `all()`. `!=` and `not in` are true
//! when the label is absent; `==`, `in`, `contains`, `starts with` and `ends with` are false then.
//! `global()` evaluates to true like `all()`; its meaning ("not in any namespace") comes from where
//! it is used (a namespace selector), which the policy model rewrites before evaluation.

use std::collections::BTreeMap;
use std::fmt;

/// A set of labels a selector can be evaluated against.
pub trait Labels {
    /// The value of label `key`, if present.
    fn get(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
}

impl Labels for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::HashMap::get(self, key).map(String::as_str)
    }
}

/// A parsed selector expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `all()`, also the empty selector.
    All,
    /// `global()`.
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == "value"`.
    Eq(String, String),
    /// `key != "value"` (true when the key is absent).
    Ne(String, String),
    /// `key in {...}`.
    In(String, Vec<String>),
    /// `key not in {...}` (true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key contains "s"`.
    Contains(String, String),
    /// `key starts with "s"`.
    StartsWith(String, String),
    /// `key ends with "s"`.
    EndsWith(String, String),
    /// `!expr`.
    Not(Box<Selector>),
    /// `a && b && ...`.
    And(Vec<Selector>),
    /// `a || b || ...`.
    Or(Vec<Selector>),
}

/// A selector that failed to parse: what was wrong and at which byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the selector string where the problem was found.
    pub position: usize,
    /// What was expected or found.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Label(String),
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Not,
    All,
    Global,
    Has(String),
    LParen,
    RParen,
    And,
    Or,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Label(l) => format!("label '{l}'"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Eof => "end of selector".to_string(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
            Tok::Eq => "'=='".into(),
            Tok::Ne => "'!='".into(),
            Tok::In => "'in'".into(),
            Tok::NotIn => "'not in'".into(),
            Tok::Contains => "'contains'".into(),
            Tok::StartsWith => "'starts with'".into(),
            Tok::EndsWith => "'ends with'".into(),
            Tok::Not => "'!'".into(),
            Tok::All => "'all()'".into(),
            Tok::Global => "'global()'".into(),
            Tok::Has(k) => format!("'has({k})'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::And => "'&&'".into(),
            Tok::Or => "'||'".into(),
        }
    }
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

const MAX_KEY_LEN: usize = 512;

fn tokenize(input: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = input.as_bytes();
    let mut i = 0;
    let mut out: Vec<(Tok, usize)> = Vec::new();
    let err = |position: usize, message: &str| ParseError { position, message: message.to_string() };
    let skip_ws = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let key_at = |i: usize| {
        let mut j = i;
        while j < b.len() && is_key_char(b[j]) {
            j += 1;
        }
        j
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            out.push((Tok::Eof, i));
            return Ok(out);
        }
        let start = i;
        let last_was_label = matches!(out.last(), Some((Tok::Label(_), _)));
        let rest = &input[i..];
        let tok = match b[i] {
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b'{' => {
                i += 1;
                Tok::LBrace
            }
            b'}' => {
                i += 1;
                Tok::RBrace
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            q @ (b'"' | b'\'') => {
                let close = input[i + 1..].find(q as char).ok_or_else(|| err(start, "unterminated string"))?;
                let value = input[i + 1..i + 1 + close].to_string();
                i += close + 2;
                Tok::Str(value)
            }
            b'=' => {
                if rest.starts_with("==") {
                    i += 2;
                    Tok::Eq
                } else {
                    return Err(err(start, "expected '=='"));
                }
            }
            b'!' => {
                if rest.starts_with("!=") {
                    i += 2;
                    Tok::Ne
                } else {
                    i += 1;
                    Tok::Not
                }
            }
            b'&' => {
                if rest.starts_with("&&") {
                    i += 2;
                    Tok::And
                } else {
                    return Err(err(start, "expected '&&'"));
                }
            }
            b'|' => {
                if rest.starts_with("||") {
                    i += 2;
                    Tok::Or
                } else {
                    return Err(err(start, "expected '||'"));
                }
            }
            _ if last_was_label => {
                // After a label only an operator keyword may follow.
                let expecting = || err(start, "unexpected characters after label, expecting an operator");
                let two_words = |first: &str, i: usize| -> Option<usize> {
                    let j = skip_ws(i + first.len());
                    input[j..].starts_with("with").then_some(j + 4)
                };
                if rest.starts_with("contains") {
                    i += "contains".len();
                    Tok::Contains
                } else if rest.starts_with("starts") {
                    i = two_words("starts", i).ok_or_else(expecting)?;
                    Tok::StartsWith
                } else if rest.starts_with("ends") {
                    i = two_words("ends", i).ok_or_else(expecting)?;
                    Tok::EndsWith
                } else if rest.starts_with("not") {
                    let j = skip_ws(i + 3);
                    if !input[j..].starts_with("in") {
                        return Err(expecting());
                    }
                    i = j + 2;
                    Tok::NotIn
                } else if rest.starts_with("in") {
                    i += 2;
                    Tok::In
                } else {
                    return Err(expecting());
                }
            }
            _ if rest.starts_with("has(") => {
                let j = skip_ws(i + 4);
                let k = key_at(j);
                if k == j {
                    return Err(err(j, "no label name in has( expression"));
                }
                let key = &input[j..k];
                if key.len() > MAX_KEY_LEN {
                    return Err(err(j, "label name longer than 512 characters"));
                }
                let close = skip_ws(k);
                if close >= b.len() || b[close] != b')' {
                    return Err(err(close, "no closing ')' after has("));
                }
                i = close + 1;
                Tok::Has(key.to_string())
            }
            _ if rest.starts_with("all(") || rest.starts_with("global(") => {
                let (word, tok) = if rest.starts_with("all(") { ("all(", Tok::All) } else { ("global(", Tok::Global) };
                let close = skip_ws(i + word.len());
                if close >= b.len() || b[close] != b')' {
                    return Err(err(close, &format!("no closing ')' after {word}")));
                }
                i = close + 1;
                tok
            }
            _ => {
                let k = key_at(i);
                if k == i {
                    return Err(err(start, "unexpected characters"));
                }
                if k - i > MAX_KEY_LEN {
                    return Err(err(start, "label name longer than 512 characters"));
                }
                let label = input[i..k].to_string();
                i = k;
                Tok::Label(label)
            }
        };
        out.push((tok, start));
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn offset(&self) -> usize {
        self.toks[self.pos].1
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if !matches!(t, Tok::Eof) {
            self.pos += 1;
        }
        t
    }
    fn error<T>(&self, message: String) -> Result<T, ParseError> {
        Err(ParseError { position: self.offset(), message })
    }

    fn or(&mut self) -> Result<Selector, ParseError> {
        let mut terms = vec![self.and()?];
        while *self.peek() == Tok::Or {
            self.next();
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 { terms.pop().unwrap() } else { Selector::Or(terms) })
    }

    fn and(&mut self) -> Result<Selector, ParseError> {
        let mut terms = vec![self.op()?];
        while *self.peek() == Tok::And {
            self.next();
            terms.push(self.op()?);
        }
        Ok(if terms.len() == 1 { terms.pop().unwrap() } else { Selector::And(terms) })
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.next();
                Ok(s)
            }
            other => self.error(format!("expected a quoted string, found {}", other.describe())),
        }
    }

    fn op(&mut self) -> Result<Selector, ParseError> {
        let mut negated = false;
        while *self.peek() == Tok::Not {
            self.next();
            negated = !negated;
        }
        let node = match self.peek().clone() {
            Tok::Has(k) => {
                self.next();
                Selector::Has(k)
            }
            Tok::All => {
                self.next();
                Selector::All
            }
            Tok::Global => {
                self.next();
                Selector::Global
            }
            Tok::LParen => {
                self.next();
                let inner = self.or()?;
                if *self.peek() != Tok::RParen {
                    return self.error(format!("expected ')', found {}", self.peek().describe()));
                }
                self.next();
                inner
            }
            Tok::Label(key) => {
                self.next();
                match self.next() {
                    Tok::Eq => Selector::Eq(key, self.string()?),
                    Tok::Ne => Selector::Ne(key, self.string()?),
                    Tok::Contains => Selector::Contains(key, self.string()?),
                    Tok::StartsWith => Selector::StartsWith(key, self.string()?),
                    Tok::EndsWith => Selector::EndsWith(key, self.string()?),
                    op @ (Tok::In | Tok::NotIn) => {
                        if *self.peek() != Tok::LBrace {
                            return self.error(format!("expected a set literal '{{', found {}", self.peek().describe()));
                        }
                        self.next();
                        let mut values = Vec::new();
                        while let Tok::Str(s) = self.peek().clone() {
                            self.next();
                            values.push(s);
                            if *self.peek() == Tok::Comma {
                                self.next();
                            } else {
                                break;
                            }
                        }
                        if *self.peek() != Tok::RBrace {
                            return self.error(format!("expected '}}', found {}", self.peek().describe()));
                        }
                        self.next();
                        values.sort();
                        values.dedup();
                        if op == Tok::In {
                            Selector::In(key, values)
                        } else {
                            Selector::NotIn(key, values)
                        }
                    }
                    other => {
                        self.pos -= usize::from(!matches!(other, Tok::Eof));
                        return self.error(format!("expected an operator after label '{key}', found {}", other.describe()));
                    }
                }
            }
            other => return self.error(format!("unexpected {}", other.describe())),
        };
        Ok(if negated { Selector::Not(Box::new(node)) } else { node })
    }
}

impl Selector {
    /// Parses a selector; the empty (or all-whitespace) string is `all()`.
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        let toks = tokenize(input)?;
        let mut p = Parser { toks, pos: 0 };
        if *p.peek() == Tok::Eof {
            return Ok(Selector::All);
        }
        let sel = p.or()?;
        if *p.peek() != Tok::Eof {
            return p.error(format!("unexpected {} after the end of the expression", p.peek().describe()));
        }
        Ok(sel)
    }

    /// The value `key` must have for this selector to match, when the selector requires one
    /// (`key == "v"`, alone or in a top-level `&&`): lets callers skip labels that cannot match.
    pub fn required_value(&self, key: &str) -> Option<&str> {
        match self {
            Selector::Eq(k, v) if k == key => Some(v),
            Selector::And(parts) => parts.iter().find_map(|p| p.required_value(key)),
            _ => None,
        }
    }

    /// Whether the labels satisfy this selector.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(k) => labels.get(k).is_some(),
            Selector::Eq(k, v) => labels.get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => labels.get(k) != Some(v.as_str()),
            Selector::In(k, vs) => labels.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::NotIn(k, vs) => !labels.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::Contains(k, s) => labels.get(k).is_some_and(|x| x.contains(s.as_str())),
            Selector::StartsWith(k, s) => labels.get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => labels.get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Selector::Not(inner) => !inner.matches(labels),
            Selector::And(terms) => terms.iter().all(|t| t.matches(labels)),
            Selector::Or(terms) => terms.iter().any(|t| t.matches(labels)),
        }
    }

    /// The conjunction of two selectors, flattening nested `&&` and dropping `all()` terms.
    pub fn and(self, other: Selector) -> Selector {
        let mut terms = Vec::new();
        for s in [self, other] {
            match s {
                Selector::All => {}
                Selector::And(ts) => terms.extend(ts),
                s => terms.push(s),
            }
        }
        match terms.len() {
            0 => Selector::All,
            1 => terms.pop().unwrap(),
            _ => Selector::And(terms),
        }
    }

    /// Prefixes every label key (Calico stores namespace labels on endpoints as `pcns.<key>` and
    /// service-account labels as `pcsa.<key>`).
    pub fn with_key_prefix(&self, prefix: &str) -> Selector {
        let p = |k: &String| format!("{prefix}{k}");
        match self {
            Selector::All => Selector::All,
            Selector::Global => Selector::Global,
            Selector::Has(k) => Selector::Has(p(k)),
            Selector::Eq(k, v) => Selector::Eq(p(k), v.clone()),
            Selector::Ne(k, v) => Selector::Ne(p(k), v.clone()),
            Selector::In(k, v) => Selector::In(p(k), v.clone()),
            Selector::NotIn(k, v) => Selector::NotIn(p(k), v.clone()),
            Selector::Contains(k, v) => Selector::Contains(p(k), v.clone()),
            Selector::StartsWith(k, v) => Selector::StartsWith(p(k), v.clone()),
            Selector::EndsWith(k, v) => Selector::EndsWith(p(k), v.clone()),
            Selector::Not(s) => Selector::Not(Box::new(s.with_key_prefix(prefix))),
            Selector::And(ts) => Selector::And(ts.iter().map(|t| t.with_key_prefix(prefix)).collect()),
            Selector::Or(ts) => Selector::Or(ts.iter().map(|t| t.with_key_prefix(prefix)).collect()),
        }
    }

    /// Replaces every `all()` and `global()` leaf (used to give them their namespace-selector meaning).
    pub fn replace_all_global(&self, all: &Selector, global: &Selector) -> Selector {
        match self {
            Selector::All => all.clone(),
            Selector::Global => global.clone(),
            Selector::Not(s) => Selector::Not(Box::new(s.replace_all_global(all, global))),
            Selector::And(ts) => Selector::And(ts.iter().map(|t| t.replace_all_global(all, global)).collect()),
            Selector::Or(ts) => Selector::Or(ts.iter().map(|t| t.replace_all_global(all, global)).collect()),
            leaf => leaf.clone(),
        }
    }
}

fn quote(s: &str) -> String {
    if s.contains('"') {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

fn set(values: &[String]) -> String {
    values.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Selector {
    /// Canonical form; parsing it gives back an equal selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Global => write!(f, "global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, v) => write!(f, "{k} in {{{}}}", set(v)),
            Selector::NotIn(k, v) => write!(f, "{k} not in {{{}}}", set(v)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => match **s {
                Selector::And(_) | Selector::Or(_) | Selector::Not(_) => write!(f, "!({s})"),
                _ => write!(f, "!{s}"),
            },
            Selector::And(ts) => {
                let parts: Vec<String> = ts.iter().map(|t| if matches!(t, Selector::Or(_)) { format!("({t})") } else { t.to_string() }).collect();
                write!(f, "{}", parts.join(" && "))
            }
            Selector::Or(ts) => write!(f, "{}", ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" || ")),
        }
    }
}

impl serde::Serialize for Selector {
    /// Serialized as its canonical string.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests;
