//! A checked walk over the spanned TOML document: every accessor reports wrong types and
//! missing keys into one list instead of stopping at the first problem.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{ConfigError, ConfigErrors};

pub(crate) type Span = Range<usize>;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub v: T,
    pub span: Span,
}

/// The error list and what is needed to turn spans into lines.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    text: &'a str,
    pub errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Ctx<'a> {
        Ctx { file, text, errors: Vec::new() }
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, span: &Span) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    pub fn column(&self, span: &Span) -> usize {
        let end = span.start.min(self.text.len());
        let line_start = self.text.as_bytes()[..end].iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        String::from_utf8_lossy(&self.text.as_bytes()[line_start..end]).chars().count() + 1
    }

    /// The source text of a span (for syntax errors only: never for values that may be secret).
    pub fn source(&self, span: &Span) -> &str {
        self.text.get(span.clone()).unwrap_or("")
    }

    pub fn err(&mut self, span: &Span, key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) {
        let line = self.line(span);
        self.err_line(Some(line), key, problem, fix);
    }

    pub fn err_line(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(ConfigError::new(self.file, line, key, problem, fix));
    }

    /// Every error, file-wide ones (no line) first, then by line; stable otherwise.
    pub fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| e.line);
        self.errors.dedup();
        ConfigErrors(self.errors)
    }
}

/// "a string", "an integer", ...
pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The integer value of a TOML integer, if it fits an i128.
pub(crate) fn integer(v: &DeValue<'_>) -> Option<Option<i128>> {
    match v {
        DeValue::Integer(i) => Some(i128::from_str_radix(i.as_str(), i.radix()).ok()),
        _ => None,
    }
}

/// One TOML table being read, with its schema path (`node[1]`, `overlay.ovl0`, `mesh`, or
/// empty for the document) and how to name it in messages (`[[node]]`, `[mesh]`).
pub(crate) struct Tab<'t, 'i> {
    pub t: &'t DeTable<'i>,
    pub path: String,
    pub span: Span,
    pub header: String,
}

impl<'t, 'i> Tab<'t, 'i> {
    pub fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// Reports every key not in `accepted`, naming the accepted ones.
    pub fn check_keys(&self, ctx: &mut Ctx<'_>, accepted: &[&str]) {
        for (k, _) in self.t.iter() {
            let name: &str = k.get_ref();
            if accepted.contains(&name) {
                continue;
            }
            let mut fix = format!("the keys accepted in {} are: {}", self.header, accepted.join(", "));
            if let Some(near) = accepted.iter().find(|a| edit_distance(a, name) <= 2) {
                fix = format!("did you mean `{near}`? {fix}");
            }
            ctx.err(&k.span(), self.key(name), format!("unknown key `{name}` in {}", self.header), fix);
        }
    }

    pub fn raw(&self, k: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.t.get(k)
    }

    /// The line to report a problem with the table as a whole (e.g. a missing key).
    pub fn line(&self, ctx: &Ctx<'_>) -> Option<usize> {
        if self.path.is_empty() {
            None
        } else {
            Some(ctx.line(&self.span))
        }
    }

    pub fn missing(&self, ctx: &mut Ctx<'_>, k: &str, example: &str) {
        let line = self.line(ctx);
        ctx.err_line(
            line,
            self.key(k),
            format!("missing required key `{k}` in {}", self.header),
            format!("add a line like {example} to it"),
        );
    }

    pub fn wrong_type(&self, ctx: &mut Ctx<'_>, k: &str, v: &Spanned<DeValue<'_>>, expected: &str, example: &str) {
        ctx.err(
            &v.span(),
            self.key(k),
            format!("expected {expected}, found {}", type_name(v.get_ref())),
            format!("write it like {example}"),
        );
    }

    /// An optional string: `None` if absent, or if of another type (reported).
    pub fn str(&self, ctx: &mut Ctx<'_>, k: &str, example: &str) -> Option<At<&'t str>> {
        let v = self.raw(k)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At { v: s.as_ref(), span: v.span() }),
            _ => {
                self.wrong_type(ctx, k, v, "a string", example);
                None
            }
        }
    }

    /// A required string: absence is reported too.
    pub fn req_str(&self, ctx: &mut Ctx<'_>, k: &str, example: &str) -> Option<At<&'t str>> {
        if self.raw(k).is_none() {
            self.missing(ctx, k, example);
            return None;
        }
        self.str(ctx, k, example)
    }

    /// An optional integer (reported if too large for any use).
    pub fn int(&self, ctx: &mut Ctx<'_>, k: &str, example: &str) -> Option<At<i128>> {
        let v = self.raw(k)?;
        match integer(v.get_ref()) {
            Some(Some(n)) => Some(At { v: n, span: v.span() }),
            Some(None) => {
                ctx.err(&v.span(), self.key(k), "the number is far too large", format!("write it like {example}"));
                None
            }
            None => {
                self.wrong_type(ctx, k, v, "an integer", example);
                None
            }
        }
    }

    pub fn req_int(&self, ctx: &mut Ctx<'_>, k: &str, example: &str) -> Option<At<i128>> {
        if self.raw(k).is_none() {
            self.missing(ctx, k, example);
            return None;
        }
        self.int(ctx, k, example)
    }

    /// An optional sub-table, read as `path.k` and named `header` in messages.
    pub fn table(&self, ctx: &mut Ctx<'_>, k: &str, header: &str, example: &str) -> Option<Tab<'t, 'i>> {
        let v = self.raw(k)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Tab { t, path: self.key(k), span: v.span(), header: header.to_string() }),
            _ => {
                self.wrong_type(ctx, k, v, &format!("a table ({header})"), example);
                None
            }
        }
    }

    /// An optional array of tables (`[[k]]`): each element with its index, or `None` if absent
    /// or not an array (reported). Elements that are not tables are reported and skipped.
    pub fn array_of_tables(
        &self,
        ctx: &mut Ctx<'_>,
        k: &str,
        example: &str,
    ) -> Option<Vec<(usize, &'t Spanned<DeValue<'i>>, &'t DeTable<'i>)>> {
        let v = self.raw(k)?;
        let DeValue::Array(items) = v.get_ref() else {
            ctx.err(
                &v.span(),
                self.key(k),
                format!("expected an array of tables ([[{k}]]), found {}", type_name(v.get_ref())),
                format!("write each entry as its own [[{k}]] section (double brackets), e.g. {example}"),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push((i, item, t)),
                other => ctx.err(
                    &item.span(),
                    format!("{}[{i}]", self.key(k)),
                    format!("expected a table, found {}", type_name(other)),
                    format!("write each entry as its own [[{k}]] section, e.g. {example}"),
                ),
            }
        }
        Some(out)
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("address", "adress"), 1);
        assert_eq!(edit_distance("vni", "vin"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("mode", "mtu"), 3);
    }
}
