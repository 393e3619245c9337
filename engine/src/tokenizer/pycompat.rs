//! Where minijinja and Python's jinja2 differ on what chat templates meet, jinja2's behaviour
//! (as transformers renders templates): Python's float `repr`, the `round`, `int`, `float`,
//! `length`, `string`, `truncate` and `wordcount` filters, the `sequence` and `number` tests,
//! Python string and list methods with their optional arguments, and transformers'
//! `{% generation %}` tag. engine/tests/fixtures/jinja2_constructs.json (made by
//! scripts/fixtures/make_jinja_fixtures.py) holds the engine to jinja2's output for each.
//!
//! Not reproduced (the render fails with a message naming the construct, or the difference is
//! listed in docs/chat-templates.md): printf-style `'...' % values` (minijinja has no hook for
//! operators; the error says to use `|format`), `%` with a negative operand (minijinja's
//! remainder is not Python's floor modulo), division by zero (gives inf, Python raises), and
//! tuples, which print as lists.

use minijinja::value::{from_args, Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use std::fmt::Write as _;

/// Registers the filters, tests and method fallbacks of this module on `env`.
pub(super) fn install(env: &mut Environment<'static>) {
    env.set_unknown_method_callback(python_methods);
    env.add_filter("round", round_filter);
    env.add_filter("int", int_filter);
    env.add_filter("float", float_filter);
    env.add_filter("length", length_filter);
    env.add_filter("count", length_filter);
    env.add_filter("string", |v: Value| -> Result<String, Error> {
        match v.as_str() {
            Some(s) => Ok(s.to_string()),
            None => python_str(&v),
        }
    });
    env.add_filter("truncate", truncate_filter);
    env.add_filter("wordcount", |s: String| {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .count()
    });
    env.add_filter("center", |s: String, width: Option<usize>| {
        pad_center(&s, width.unwrap_or(80), ' ')
    });
    // jinja2: anything with a length and item access (strings and dicts too).
    env.add_test("sequence", |v: Value| {
        matches!(
            v.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Bytes
        )
    });
    // jinja2: Python numbers, bools included (bool is an int subclass).
    env.add_test("number", |v: Value| v.is_number() || v.kind() == ValueKind::Bool);
}

/// Rewrites transformers' `{% generation %}` ... `{% endgeneration %}` into a block with the
/// same whitespace behaviour (`{% if true %}` ... `{% endif %}`): transformers renders the body
/// as it is unless an assistant-token mask is asked for, which pspace never does. Whitespace
/// control marks (`-`, `+`) are kept.
pub(super) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        match parse_generation_tag(tag) {
            Some((len, open_mark, word, close_mark)) => {
                let keyword = if word == "generation" { "if true" } else { "endif" };
                let _ = write!(out, "{{%{open_mark} {keyword} {close_mark}%}}");
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{%[-+]? (end)?generation [-+]?%}` at the start of `s`: (length, marks, word).
fn parse_generation_tag(s: &str) -> Option<(usize, &str, &str, &str)> {
    let body = &s[2..];
    let open_mark = if body.starts_with(['-', '+']) {
        &body[..1]
    } else {
        ""
    };
    let after_mark = &body[open_mark.len()..];
    let trimmed = after_mark.trim_start();
    let word = ["endgeneration", "generation"]
        .into_iter()
        .find(|w| trimmed.starts_with(w))?;
    let tail = trimmed[word.len()..].trim_start();
    let (close_mark, tail) = match tail.strip_prefix(['-', '+']) {
        Some(t) => (&tail[..1], t),
        None => ("", tail),
    };
    tail.strip_prefix("%}")?;
    let len = s.len() - tail.len() + 2;
    // The word must end there (not `generation_prompt` or similar).
    let boundary = trimmed[word.len()..].chars().next();
    if !matches!(boundary, Some(c) if c.is_whitespace() || c == '-' || c == '+' || c == '%') {
        return None;
    }
    Some((len, open_mark, word, close_mark))
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation when the
/// decimal exponent lies in [-4, 16), else `d.ddde+XX` (CPython `float_repr_style = 'short'`).
pub(super) fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // position of the decimal point after the first digit
    if !(-4 < decpt && decpt <= 16) {
        let (first, more) = digits.split_at(1);
        let more = if more.is_empty() {
            String::new()
        } else {
            format!(".{more}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{more}e{esign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// Python's `str()` of a value: strings as they are, numbers and containers as `repr`.
fn python_str(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    super::template::python_repr(value, &mut out)?;
    Ok(out)
}

/// jinja2's `round(value, precision=0, method='common')`: 'common' is Python's `round` (half to
/// even on the exact binary value; an int stays an int), 'ceil' and 'floor' scale by 10^precision.
fn round_filter(value: Value, precision: Option<i32>, method: Option<String>) -> Result<Value, Error> {
    let precision = precision.unwrap_or(0);
    let method = method.unwrap_or_else(|| "common".into());
    let x = f64::try_from(value.clone()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("round: expected a number, found {}", value.kind()),
        )
    })?;
    match method.as_str() {
        "common" => {
            if value.is_integer() && precision >= 0 {
                return Ok(value);
            }
            Ok(Value::from(python_round(x, precision)))
        }
        "ceil" | "floor" => {
            let scale = 10f64.powi(precision);
            let scaled = if method == "ceil" {
                (x * scale).ceil()
            } else {
                (x * scale).floor()
            };
            Ok(Value::from(scaled / scale))
        }
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("round: method must be 'common', 'ceil' or 'floor', found {other:?}"),
        )),
    }
}

/// Python's `round(x, n)` for floats: the decimal value of `x` rounded half to even at `n`
/// digits, read back as the nearest float (Rust's exact formatting rounds the same way).
fn python_round(x: f64, digits: i32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if digits >= 0 {
        format!("{x:.*}", digits as usize).parse().unwrap_or(x)
    } else {
        let scale = 10f64.powi(-digits);
        let q = x / scale;
        let r = q.round();
        let r = if (q - q.trunc()).abs() == 0.5 {
            2.0 * (q / 2.0).round()
        } else {
            r
        };
        r * scale
    }
}

/// jinja2's `int(value, default=0, base=10)`: numbers truncate, strings parse as an int (in
/// `base`) or else as a float, anything else gives `default`.
fn int_filter(value: Value, default: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let base: Option<u32> = kwargs.get("base")?;
    let default: Option<Value> = match kwargs.get::<Option<Value>>("default")? {
        Some(d) => Some(d),
        None => default,
    };
    kwargs.assert_all_used()?;
    let fallback = || default.clone().unwrap_or(Value::from(0));
    if value.is_integer() {
        return Ok(value);
    }
    if value.kind() == ValueKind::Bool {
        return Ok(Value::from(value.is_true() as i64));
    }
    if let Ok(x) = f64::try_from(value.clone()) {
        if value.kind() == ValueKind::Number {
            return Ok(if x.is_finite() {
                Value::from(x.trunc() as i64)
            } else {
                fallback()
            });
        }
    }
    let Some(s) = value.as_str() else {
        return Ok(fallback());
    };
    let s = s.trim().replace('_', "");
    let base = base.unwrap_or(10);
    if let Ok(i) = i64::from_str_radix(&s, base) {
        return Ok(Value::from(i));
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && base == 10 => Ok(Value::from(x.trunc() as i64)),
        _ => Ok(fallback()),
    }
}

/// jinja2's `float(value, default=0.0)`.
fn float_filter(value: Value, default: Option<f64>) -> Value {
    let default = default.unwrap_or(0.0);
    if value.kind() == ValueKind::Bool {
        return Value::from(if value.is_true() { 1.0 } else { 0.0 });
    }
    if value.is_number() {
        return Value::from(f64::try_from(value).unwrap_or(default));
    }
    let parsed = value.as_str().and_then(|s| {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            "nan" => Some(f64::NAN),
            _ => t.parse::<f64>().ok(),
        }
    });
    Value::from(parsed.unwrap_or(default))
}

/// `length` / `count`: jinja2's undefined has length 0.
fn length_filter(value: Value) -> Result<usize, Error> {
    if value.is_undefined() {
        return Ok(0);
    }
    value.len().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot calculate length of value of type {}", value.kind()),
        )
    })
}

/// jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`.
fn truncate_filter(
    s: String,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    leeway: Option<usize>,
) -> Result<String, Error> {
    let length = length.unwrap_or(255);
    let end = end.unwrap_or_else(|| "...".into());
    let leeway = leeway.unwrap_or(5);
    let chars: Vec<char> = s.chars().collect();
    let end_len = end.chars().count();
    if length < end_len {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("truncate: expected length >= {end_len}, found {length}"),
        ));
    }
    if chars.len() <= length + leeway {
        return Ok(s);
    }
    let head: String = chars[..length - end_len].iter().collect();
    if killwords.unwrap_or(false) {
        return Ok(head + &end);
    }
    let cut = match head.rfind(' ') {
        Some(i) => head[..i].to_string(),
        None => head,
    };
    Ok(cut + &end)
}

/// Python's `str.center(width, fillchar)`: the extra fill goes left when the margin and the
/// width are both odd (CPython's `pad`).
fn pad_center(s: &str, width: usize, fill: char) -> String {
    let len = s.chars().count();
    if width <= len {
        return s.to_string();
    }
    let margin = width - len;
    let left = margin / 2 + (margin & width & 1);
    let fill_str = |n: usize| std::iter::repeat_n(fill, n).collect::<String>();
    format!("{}{s}{}", fill_str(left), fill_str(margin - left))
}

/// Python's slice bounds on a string of `len` characters (negative counts from the end).
fn slice_bounds(len: usize, start: Option<i64>, end: Option<i64>) -> (usize, usize) {
    let fix = |i: i64| -> usize {
        if i < 0 {
            (len as i64 + i).max(0) as usize
        } else {
            (i as usize).min(len)
        }
    };
    (start.map_or(0, fix), end.map_or(len, fix))
}

/// `startswith` / `endswith` with Python's arguments: a string or a tuple of strings, and an
/// optional start and end.
fn affix_test(s: &str, args: &[Value], suffix: bool) -> Result<Value, Error> {
    let (what, start, end): (&Value, Option<i64>, Option<i64>) = from_args(args)?;
    let chars: Vec<char> = s.chars().collect();
    let (a, b) = slice_bounds(chars.len(), start, end);
    let window: String = if a <= b {
        chars[a..b].iter().collect()
    } else {
        String::new()
    };
    let test = |p: &str| {
        if suffix {
            window.ends_with(p)
        } else {
            window.starts_with(p)
        }
    };
    if let Some(p) = what.as_str() {
        return Ok(Value::from(test(p)));
    }
    if matches!(what.kind(), ValueKind::Seq | ValueKind::Iterable) {
        for p in what.try_iter()? {
            let p = p.as_str().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "startswith/endswith: a tuple of strings expected",
                )
            })?;
            if test(p) {
                return Ok(Value::from(true));
            }
        }
        return Ok(Value::from(false));
    }
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "startswith/endswith: expected a string or a tuple of strings, found {}",
            what.kind()
        ),
    ))
}

/// Python's `str.split(sep=None, maxsplit=-1)` from the right.
fn rsplit(s: &str, sep: Option<&str>, maxsplit: i64) -> Vec<String> {
    let limit = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    match sep {
        Some(sep) => {
            let mut parts: Vec<String> = s
                .rsplitn(limit.saturating_add(1), sep)
                .map(str::to_string)
                .collect();
            parts.reverse();
            parts
        }
        None => {
            let mut parts = Vec::new();
            let mut rest = s.trim_end();
            while !rest.is_empty() {
                if parts.len() == limit {
                    parts.push(rest.to_string());
                    break;
                }
                match rest.rfind(char::is_whitespace) {
                    Some(i) => {
                        let ws_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                        parts.push(rest[i + ws_len..].to_string());
                        rest = rest[..i].trim_end();
                    }
                    None => {
                        parts.push(rest.to_string());
                        rest = "";
                    }
                }
            }
            parts.reverse();
            parts
        }
    }
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Option<Result<Value, Error>> {
    let not_found = || Error::new(ErrorKind::InvalidOperation, "str.index: substring not found");
    Some(match method {
        "startswith" => affix_test(s, args, false),
        "endswith" => affix_test(s, args, true),
        "rsplit" => from_args::<(Option<&str>, Option<i64>)>(args)
            .map(|(sep, max)| Value::from(rsplit(s, sep, max.unwrap_or(-1)))),
        "swapcase" => from_args::<()>(args).map(|()| {
            Value::from(
                s.chars()
                    .flat_map(|c| -> Vec<char> {
                        if c.is_uppercase() {
                            c.to_lowercase().collect()
                        } else {
                            c.to_uppercase().collect()
                        }
                    })
                    .collect::<String>(),
            )
        }),
        "casefold" => from_args::<()>(args).map(|()| Value::from(s.to_lowercase())),
        "index" | "rindex" => from_args::<(&str,)>(args).and_then(|(sub,)| {
            let at = if method == "index" {
                s.find(sub)
            } else {
                s.rfind(sub)
            };
            at.map(|b| Value::from(s[..b].chars().count()))
                .ok_or_else(not_found)
        }),
        "istitle" => from_args::<()>(args).map(|()| {
            let mut prev_cased = false;
            let mut any = false;
            let mut ok = true;
            for c in s.chars() {
                if c.is_uppercase() {
                    ok &= !prev_cased;
                    prev_cased = true;
                    any = true;
                } else if c.is_lowercase() {
                    ok &= prev_cased;
                    prev_cased = true;
                    any = true;
                } else {
                    prev_cased = false;
                }
            }
            Value::from(ok && any)
        }),
        "isdecimal" => from_args::<()>(args)
            .map(|()| Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))),
        "zfill" => from_args::<(usize,)>(args).map(|(width,)| {
            let len = s.chars().count();
            if width <= len {
                return Value::from(s);
            }
            let (sign, digits) = match s.chars().next() {
                Some(c @ ('+' | '-')) => (c.to_string(), &s[1..]),
                _ => (String::new(), s),
            };
            Value::from(format!("{sign}{}{digits}", "0".repeat(width - len)))
        }),
        "center" | "ljust" | "rjust" => from_args::<(usize, Option<&str>)>(args).and_then(|(width, fill)| {
            let fill = match fill.map(|f| f.chars().collect::<Vec<_>>()) {
                None => ' ',
                Some(f) if f.len() == 1 => f[0],
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("str.{method}: the fill character must be exactly one character long"),
                    ))
                }
            };
            let pad = width.saturating_sub(s.chars().count());
            let fill_str = std::iter::repeat_n(fill, pad).collect::<String>();
            Ok(Value::from(match method {
                "center" => pad_center(s, width, fill),
                "ljust" => format!("{s}{fill_str}"),
                _ => format!("{fill_str}{s}"),
            }))
        }),
        "removeprefix" => from_args::<(&str,)>(args).map(|(p,)| Value::from(s.strip_prefix(p).unwrap_or(s))),
        "removesuffix" => from_args::<(&str,)>(args).map(|(p,)| Value::from(s.strip_suffix(p).unwrap_or(s))),
        "partition" | "rpartition" => from_args::<(&str,)>(args).map(|(sep,)| {
            let found = if method == "partition" {
                s.find(sep)
            } else {
                s.rfind(sep)
            };
            let parts = match found {
                Some(i) => vec![&s[..i], sep, &s[i + sep.len()..]],
                None if method == "partition" => vec![s, "", ""],
                None => vec!["", "", s],
            };
            Value::from(parts.into_iter().map(str::to_string).collect::<Vec<_>>())
        }),
        _ => return None,
    })
}

/// Python methods minijinja-contrib's `pycompat` lacks or takes fewer arguments for; the rest
/// go to `pycompat`. An unknown method stays an error naming the method and the type.
fn python_methods(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(result) = string_method(s, method, args) {
            return result;
        }
    }
    if value.kind() == ValueKind::Seq && method == "index" {
        let (what,): (&Value,) = from_args(args)?;
        return value
            .try_iter()?
            .position(|x| &x == what)
            .map(Value::from)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "list.index: value is not in the list",
                )
            });
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args).map_err(|e| {
        if e.kind() == ErrorKind::UnknownMethod {
            Error::new(
                ErrorKind::UnknownMethod,
                format!(
                    "Python method {}.{method}() is not supported by pspace's template renderer",
                    value.kind()
                ),
            )
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr_prints_them() {
        for (x, want) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.23456789e16, "1.23456789e+16"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (-2.5e22, "-2.5e+22"),
            (123.456, "123.456"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn python_round_is_half_even_on_the_exact_value() {
        assert_eq!(python_round(2.5, 0), 2.0);
        assert_eq!(python_round(3.5, 0), 4.0);
        assert_eq!(python_round(-2.5, 0), -2.0);
        assert_eq!(python_round(2.675, 2), 2.67);
        assert_eq!(python_round(1.005, 2), 1.0);
        assert_eq!(python_round(1250.0, -2), 1200.0);
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration +%}c{% if x %}{% endif %}"),
            "a{%- if true -%}b{% endif +%}c{% if x %}{% endif %}"
        );
        // Not the tag: longer names, expressions that mention it.
        let other = "{% set generation_prompt = 1 %}{{ generation }}{%generations%}";
        assert_eq!(rewrite_generation_tags(other), other);
        assert_eq!(rewrite_generation_tags("{%"), "{%");
    }

    #[test]
    fn rsplit_and_center_follow_python() {
        assert_eq!(rsplit("a,b,c", Some(","), 1), vec!["a,b", "c"]);
        assert_eq!(rsplit("  a b  c ", None, -1), vec!["a", "b", "c"]);
        assert_eq!(rsplit("a b c", None, 1), vec!["a b", "c"]);
        assert_eq!(pad_center("a", 5, ' '), "  a  ");
        assert_eq!(pad_center("ab", 5, '*'), "**ab*");
        assert_eq!(pad_center("a", 4, '*'), "*a**");
    }
}
