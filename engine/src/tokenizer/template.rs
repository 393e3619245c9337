//! Chat templates rendered with minijinja the way transformers renders them with jinja2
//! (`render_jinja_template`): `trim_blocks` and `lstrip_blocks` on, no trailing newline kept,
//! Python string and dict methods (`.strip()`, `.startswith()`, `.items()`, ...), the globals
//! `raise_exception(msg)` and `strftime_now(fmt)`, a `tojson` filter that writes what Python's
//! `json.dumps(x, ensure_ascii=False)` writes (not jinja's HTML-escaping one), and the variables
//! `messages`, `add_generation_prompt`, `tools = none`, `documents = none` plus the tokenizer's
//! special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`) where it has them, as
//! transformers passes `special_tokens_map`. Where minijinja's behaviour differs from jinja2's,
//! `pycompat` supplies jinja2's (numbers, filters, tests, methods, the `{% generation %}` tag).

use super::pycompat;
use super::{ChatMessage, TokenizerError};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The special tokens a template may reference, by their `special_tokens_map` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// Instructions one render may execute (minijinja fuel).
const TEMPLATE_FUEL: u64 = 5_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.origin)
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names where it came from (file and key) in every error.
    pub fn new(source: &str, origin: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // A bound on the work one render may do: real chat templates take thousands of
        // instructions; a hostile one (nested ranges) stops with an error instead of hanging.
        env.set_fuel(Some(TEMPLATE_FUEL));
        pycompat::install(&mut env);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |format: String| -> String {
            strftime_utc(&format, std::time::SystemTime::now())
        });
        env.add_filter("tojson", python_tojson);
        env.set_formatter(python_formatter);
        env.add_template_owned("chat_template", pycompat::rewrite_generation_tags(source))
            .map_err(|e| TokenizerError::Template {
                origin: origin.to_string(),
                message: format!("does not parse as a jinja template: {e:#}"),
            })?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        special_tokens: &SpecialTokens,
    ) -> Result<String, TokenizerError> {
        let err = |e: Error| {
            let mut message = format!("rendering failed: {e:#}");
            if e.kind() == ErrorKind::InvalidOperation && message.contains("% operator") {
                message.push_str(
                    "\n(the template uses Python's printf-style string formatting, '...' % values, which \
                     pspace's template renderer does not support; the same text is written with the \
                     `format` filter: '...' | format(values))",
                );
            }
            TokenizerError::Template {
                origin: self.origin.clone(),
                message,
            }
        };
        let template = self.env.get_template("chat_template").map_err(err)?;
        let mut vars: BTreeMap<&str, Value> = BTreeMap::new();
        vars.insert("messages", Value::from_serialize(messages));
        vars.insert("add_generation_prompt", Value::from(add_generation_prompt));
        vars.insert("tools", Value::from(()));
        vars.insert("documents", Value::from(()));
        // transformers passes only the special tokens that are set: an unset one is undefined.
        for (name, token) in [
            ("bos_token", &special_tokens.bos_token),
            ("eos_token", &special_tokens.eos_token),
            ("unk_token", &special_tokens.unk_token),
            ("pad_token", &special_tokens.pad_token),
        ] {
            if let Some(token) = token {
                vars.insert(name, Value::from(token.as_str()));
            }
        }
        template.render(vars).map_err(err)
    }
}

/// Prints values as jinja2 does, through Python's `str()`: `True`/`False`/`None` and Python
/// list and dict reprs (minijinja's default writes `true`, `none`, JSON-like lists).
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Number if !value.is_integer() => {
            out.write_str(&pycompat::python_float_repr(f64::try_from(value.clone())?))?;
            Ok(())
        }
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let mut text = String::new();
            python_repr(value, &mut text)?;
            out.write_str(&text)?;
            Ok(())
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr()` of a value (`str()` for the outermost non-string value).
pub(super) fn python_repr(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Number if !value.is_integer() => {
            out.push_str(&pycompat::python_float_repr(f64::try_from(value.clone())?));
        }
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            // Python quotes with ' unless the text has ' and no ".
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&key, out)?;
                out.push_str(": ");
                python_repr(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `json.dumps(value, ensure_ascii=..., indent=..., separators=..., sort_keys=...)`, which
/// transformers installs as `tojson` (jinja's own escapes `<`, `>`, `&`, `'` for HTML).
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(s) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: separators must be two strings, found {}", s.len()),
            ))
        }
        // Python's defaults: ", " without indent, "," with it (no trailing spaces).
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if !value.is_integer() => {
                // json.dumps writes floats with repr(), and non-finite ones as JavaScript names.
                let x = f64::try_from(value.clone())?;
                out.push_str(&match x {
                    x if x.is_nan() => "NaN".to_string(),
                    x if x == f64::INFINITY => "Infinity".to_string(),
                    x if x == f64::NEG_INFINITY => "-Infinity".to_string(),
                    x => pycompat::python_float_repr(x),
                });
            }
            ValueKind::Number => {
                let json = serde_json::to_string(value)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
                out.push_str(&json);
            }
            ValueKind::String => self.write_string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container('[', ']', items.len(), depth, out, |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.write_container('{', '}', keys.len(), depth, out, |i, out| {
                    let key = &keys[i];
                    match key.as_str() {
                        Some(s) => self.write_string(s, out),
                        None => self.write_string(&key.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&value.get_item(key)?, depth + 1, out)
                })?;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialise a value of kind {other}"),
                ))
            }
        }
        Ok(())
    }

    fn write_container(
        &self,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(width) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(width * (depth + 1)));
            }
            item(i, out)?;
        }
        if let Some(width) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
        out.push(close);
        Ok(())
    }

    fn write_string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// `datetime.now().strftime(format)` for the directives chat templates use (dates in system
/// prompts), in UTC; unknown directives are kept as written.
fn strftime_utc(format: &str, now: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", second_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", second_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", second_of_day % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, TokenizerError> {
        ChatTemplate::new(source, "test.json")?.render(messages, true, &SpecialTokens::default())
    }

    #[test]
    fn python_methods_trim_blocks_and_raise_exception_work() {
        let source = "{% for m in messages %}\n{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\n{{ m.content.strip() }}|{% endfor %}{% if add_generation_prompt %}GO{% endif %}\n";
        let msgs = [
            ChatMessage::new("user", "  hi  "),
            ChatMessage::new("assistant", "yo"),
        ];
        assert_eq!(render(source, &msgs).unwrap(), "hi|yo|GO");
        let err = render(source, &[ChatMessage::new("bad", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no bad roles") && err.contains("test.json"), "{err}");
        let err = ChatTemplate::new("{% for %}", "broken.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.json") && err.contains("parse"), "{err}");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let source = "{{ messages[0] | tojson }}|{{ messages | tojson(indent=2) }}|{{ {'b': 1, 'a': [1.5, none, true]} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, separators=[',', ':']) }}|{{ 'é<\"\n' | tojson }}|{{ 'é😀' | tojson(ensure_ascii=true) }}";
        let out = render(source, &[ChatMessage::new("user", "a<b>")]).unwrap();
        let want = [
            r#"{"role": "user", "content": "a<b>"}"#,
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"a<b>\"\n  }\n]",
            r#"{"b": 1, "a": [1.5, null, true]}"#,
            r#"{"a":2,"b":1}"#,
            r#""é<\"\n""#,
            r#""\u00e9\ud83d\ude00""#,
        ]
        .join("|");
        assert_eq!(out, want);
    }

    #[test]
    fn special_tokens_are_defined_only_when_the_tokenizer_has_them() {
        let source =
            "{% if bos_token is defined %}[{{ bos_token }}]{% else %}no bos{% endif %}{{ eos_token }}";
        let template = ChatTemplate::new(source, "t").unwrap();
        let tokens = SpecialTokens {
            eos_token: Some("</s>".into()),
            ..SpecialTokens::default()
        };
        assert_eq!(template.render(&[], false, &tokens).unwrap(), "no bos</s>");
        let tokens = SpecialTokens {
            bos_token: Some("<s>".into()),
            ..tokens
        };
        assert_eq!(template.render(&[], false, &tokens).unwrap(), "[<s>]</s>");
    }

    #[test]
    fn strftime_formats_a_known_instant() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_211_909);
        assert_eq!(
            strftime_utc("%d %b %Y %H:%M:%S %A %B %y %m %% %q", t),
            "29 Feb 2024 13:05:09 Thursday February 24 02 % %q"
        );
    }
}
