//! `report.html`: the report as one self-contained page, rendered from the very markdown
//! `write_report` writes to `report.md` (so the two never say different things), with every
//! figure inlined as its SVG, a contents list, anchors on every section and figure, and a
//! small stylesheet. Nothing is loaded from outside the file (no scripts, fonts, images or
//! links to sibling files), so it can be mailed or archived alone.
//!
//! The converter knows only the markdown the report writer produces: `#`/`##`/`###`
//! headings, pipe tables (`\|` is a literal bar), `- ` lists, `> ` quotes, paragraphs, and
//! inline `**bold**`, `` `code` `` and `[text](target)`; an image line `![..](NAME.png)` becomes a
//! `<figure>` with `NAME.svg` inline and the paragraph after it (the caption) as its
//! `<figcaption>`. The output is well-formed XML (XHTML-clean: every element closed, text
//! escaped), which the report tests parse.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `**bold**` and `[text](target)` of escaped text (no code spans inside).
fn emphasis_and_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    let mut bold = false;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("**") {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = after;
            continue;
        }
        if rest.starts_with('[') {
            if let Some((label, target, after)) = link(rest) {
                // Only in-page anchors and web addresses stay links: a sibling file would not
                // travel with the page.
                if target.starts_with('#') || target.starts_with("https://") || target.starts_with("http://")
                {
                    let _ = write!(out, "<a href=\"{target}\">{label}</a>");
                } else {
                    out.push_str(label);
                }
                rest = after;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

/// `[label](target)rest` -> (label, target, rest).
fn link(text: &str) -> Option<(&str, &str, &str)> {
    let close = text.find("](")?;
    let end = text[close..].find(')')? + close;
    let label = &text[1..close];
    let target = &text[close + 2..end];
    (!label.contains('[') && !target.contains(' ')).then_some((label, target, &text[end + 1..]))
}

/// Inline markdown of one line: code spans verbatim, then bold and links.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&emphasis_and_links(&escape(part)));
        }
    }
    out
}

/// A table cell's inline markdown, with verdict labels marked for the stylesheet; a geometry
/// cell ("+0.0123 (q ...); vs benign ...; benign share ...") gets one line per part.
fn cell(text: &str) -> String {
    let text = text.trim();
    let class = match text {
        "**FIRES**" => Some("fires"),
        "**does not fire**" => Some("no"),
        "**not evaluated**" => Some("na"),
        _ => None,
    };
    match class {
        Some(c) => format!("<span class=\"verdict {c}\">{}</span>", inline(text)),
        None if text.starts_with(['+', '-']) && text.contains("; ") => {
            text.split("; ").map(inline).collect::<Vec<_>>().join("<br/>")
        }
        None => inline(text),
    }
}

/// `<td>` of a cell: a number (an interval, "k/n = p", "1.5e-3") right-aligned, a cell of
/// several lines kept to its lines.
fn td(text: &str) -> String {
    let text_ = text.trim();
    let numeric = text_
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || "+-[".contains(c))
        && text_.chars().filter(|c| c.is_alphabetic()).count() <= 2;
    let content = cell(text);
    if numeric {
        format!("<td class=\"num\">{content}</td>")
    } else if content.contains("<br/>") {
        format!("<td class=\"lines\">{content}</td>")
    } else {
        format!("<td>{content}</td>")
    }
}

/// Cells of a pipe-table row; `\|` is a bar inside a cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                current.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

/// A lowercase, hyphenated id for a heading, unique within the page.
fn slug(text: &str, taken: &mut BTreeSet<String>) -> String {
    let mut s = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let base = s.trim_end_matches('-').to_string();
    let base = if base.is_empty() {
        "section".to_string()
    } else {
        base
    };
    let mut id = base.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(id.clone());
    id
}

/// The `(name).svg` of an image line `![alt](name.png)`.
fn image_target(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("![")?;
    let open = rest.find("](")?;
    let target = rest[open + 2..].strip_suffix(')')?;
    Some(target)
}

/// An SVG file's markup ready to inline: the `<svg>` element alone (an XML prolog or
/// comment before it is dropped), allowed to grow to 1.45 times its paper size (the page's
/// text is larger than a paper's) and to shrink with the window.
fn inline_svg(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let start = text
        .find("<svg")
        .ok_or_else(|| std::io::Error::other(format!("{} holds no <svg> element", path.display())))?;
    let svg = text[start..].trim_end();
    let width: Option<f64> = svg
        .split_once("width=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .and_then(|w| w.parse().ok());
    Ok(match width {
        Some(w) => svg.replacen(
            "<svg ",
            &format!("<svg style=\"max-width: {:.0}px\" ", w * 1.45),
            1,
        ),
        None => svg.to_string(),
    })
}

struct Heading {
    level: usize,
    id: String,
    text: String,
}

const STYLE: &str = "
:root { --ink: #222; --muted: #666; --line: #d9d9d9; --band: #f6f6f6; --accent: #0072b2; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; font: 15px/1.5 -apple-system, 'Segoe UI', 'DejaVu Sans', Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.3em; margin: 1.8em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08em; margin: 1.4em 0 0.4em; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 0.9em/1.3 'DejaVu Sans Mono', Menlo, Consolas, monospace; background: var(--band); padding: 0 3px; border-radius: 3px; }
nav.contents { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px; margin: 16px 0 8px; }
nav.contents h2 { font-size: 1em; border: 0; margin: 0 0 4px; padding: 0; }
nav.contents ol { margin: 0; padding-left: 1.4em; }
nav.contents ol ol { font-size: 0.93em; }
.table-wrap { overflow-x: auto; margin: 10px 0 14px; }
table { border-collapse: collapse; font-size: 0.86em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--band); }
td.num { text-align: right; white-space: nowrap; }
td.lines { white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfbfb; }
.verdict { display: inline-block; padding: 0 6px; border-radius: 3px; white-space: nowrap; }
.verdict.fires { background: #d6ecf7; }
.verdict.no { background: #eeeeee; }
.verdict.na { background: #fbe9d6; }
blockquote { margin: 12px 0; padding: 6px 14px; border-left: 4px solid #d55e00; background: #fdf1e8; }
figure { margin: 18px 0 26px; }
figure svg { display: block; width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { max-width: 1000px; font-size: 0.92em; color: var(--muted); margin-top: 6px; }
footer { margin-top: 40px; font-size: 0.85em; color: var(--muted); }
@media print { main { max-width: none; padding: 0; } figure { break-inside: avoid; } }
";

/// Renders `markdown` (report.md's text) as a self-contained page; the figures' SVGs are read
/// from `dir`. Errors name a figure file that cannot be read.
pub fn render(markdown: &str, dir: &Path) -> std::io::Result<String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut taken = BTreeSet::new();
    taken.insert("contents".to_string());
    let mut headings = Vec::new();
    let mut figures: Vec<(String, String)> = Vec::new();
    let mut title = "pspace analysis report".to_string();
    let mut body = String::new();
    let mut i = 0;
    let mut figure_number = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        if let Some(level) = ["# ", "## ", "### "].iter().position(|p| trimmed.starts_with(p)) {
            let text = trimmed[level + 2..].trim().to_string();
            if level == 0 {
                title = text.clone();
                let _ = writeln!(
                    body,
                    "<h1 id=\"{}\">{}</h1>",
                    slug(&text, &mut taken),
                    inline(&text)
                );
            } else {
                if headings.is_empty() {
                    // The contents list goes before the first section.
                    body.push_str("<!--contents-->\n");
                }
                let id = slug(&text, &mut taken);
                let _ = writeln!(body, "<h{n} id=\"{id}\">{}</h{n}>", inline(&text), n = level + 1);
                headings.push(Heading {
                    level: level + 1,
                    id,
                    text,
                });
            }
            i += 1;
        } else if trimmed.starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].trim().starts_with('|') {
                i += 1;
            }
            let rows = &lines[start..i];
            body.push_str("<div class=\"table-wrap\"><table>\n");
            let separator = rows
                .get(1)
                .is_some_and(|r| r.trim().trim_matches('|').chars().all(|c| "-:| ".contains(c)));
            let (head, rest) = if separator {
                (Some(rows[0]), &rows[2..])
            } else {
                (None, rows)
            };
            if let Some(head) = head {
                body.push_str("<thead><tr>");
                for c in cells(head) {
                    let _ = write!(body, "<th>{}</th>", cell(&c));
                }
                body.push_str("</tr></thead>\n");
            }
            body.push_str("<tbody>\n");
            for row in rest {
                body.push_str("<tr>");
                for c in cells(row) {
                    body.push_str(&td(&c));
                }
                body.push_str("</tr>\n");
            }
            body.push_str("</tbody></table></div>\n");
        } else if trimmed.starts_with("- ") {
            body.push_str("<ul>\n");
            while i < lines.len() && lines[i].trim().starts_with("- ") {
                let _ = writeln!(body, "<li>{}</li>", inline(&lines[i].trim()[2..]));
                i += 1;
            }
            body.push_str("</ul>\n");
        } else if trimmed.starts_with('>') {
            body.push_str("<blockquote>\n");
            let mut items = Vec::new();
            while i < lines.len() && lines[i].trim().starts_with('>') {
                let text = lines[i].trim().trim_start_matches('>').trim();
                if let Some(item) = text.strip_prefix("- ") {
                    items.push(item.to_string());
                } else if !text.is_empty() {
                    let _ = writeln!(body, "<p>{}</p>", inline(text));
                }
                i += 1;
            }
            if !items.is_empty() {
                body.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(body, "<li>{}</li>", inline(&item));
                }
                body.push_str("</ul>\n");
            }
            body.push_str("</blockquote>\n");
        } else if let Some(target) = image_target(trimmed) {
            let stem = target.strip_suffix(".png").unwrap_or(target);
            let svg = inline_svg(&dir.join(format!("{stem}.svg")))?;
            i += 1;
            while i < lines.len() && lines[i].trim().is_empty() {
                i += 1;
            }
            // The paragraph after the image is its caption.
            let mut caption = String::new();
            while i < lines.len() && !lines[i].trim().is_empty() {
                caption.push_str(lines[i].trim());
                caption.push(' ');
                i += 1;
            }
            figure_number += 1;
            let id = slug(&format!("figure {stem}"), &mut taken);
            // The caption's links to the figure's own files stay in report.md only.
            let text = caption.trim();
            let text = match text.rfind(" (files: ") {
                Some(at) if text.ends_with(')') || text.ends_with("dpi") => &text[..at],
                _ => text,
            }
            .to_string();
            let _ = writeln!(
                body,
                "<figure id=\"{id}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>",
                inline(&text)
            );
            // The contents list names a figure by its caption's first sentence.
            let plain = text.split_once("** ").map_or(text.as_str(), |(_, rest)| rest);
            let name = plain.split(". ").next().unwrap_or(stem).trim_end_matches('.');
            figures.push((id, format!("Figure {figure_number}. {name}")));
        } else {
            let mut text = String::new();
            while i < lines.len() {
                let t = lines[i].trim();
                let block_start = t.is_empty()
                    || t.starts_with('#')
                    || t.starts_with('|')
                    || t.starts_with("- ")
                    || t.starts_with('>')
                    || image_target(t).is_some();
                if block_start && !text.is_empty() {
                    break;
                }
                text.push_str(t);
                text.push(' ');
                i += 1;
            }
            let _ = writeln!(body, "<p>{}</p>", inline(text.trim()));
        }
    }
    let mut contents = String::from(
        "<nav class=\"contents\" id=\"contents\" aria-label=\"Contents\">\n<h2>Contents</h2>\n<ol>\n",
    );
    let mut open_sub = false;
    let mut open_item = false;
    for h in &headings {
        if h.level == 2 {
            if open_sub {
                contents.push_str("</ol>");
                open_sub = false;
            }
            if open_item {
                contents.push_str("</li>\n");
            }
            let _ = write!(contents, "<li><a href=\"#{}\">{}</a>", h.id, inline(&h.text));
            open_item = true;
        } else {
            if !open_sub {
                contents.push_str("<ol>");
                open_sub = true;
            }
            let _ = write!(contents, "<li><a href=\"#{}\">{}</a></li>", h.id, inline(&h.text));
        }
    }
    if open_sub {
        contents.push_str("</ol>");
    }
    if open_item {
        contents.push_str("</li>\n");
    }
    if !figures.is_empty() {
        contents.push_str("<li>Figures<ol>");
        for (id, label) in &figures {
            let _ = write!(contents, "<li><a href=\"#{id}\">{}</a></li>", escape(label));
        }
        contents.push_str("</ol></li>\n");
    }
    contents.push_str("</ol>\n</nav>\n");
    let body = body.replacen("<!--contents-->\n", &contents, 1);
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\" xmlns=\"http://www.w3.org/1999/xhtml\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}<footer>Rendered from report.md by pspace; every number comes from result.json. <a href=\"#contents\">Back to the contents</a>.</footer>\n</main>\n</body>\n</html>\n",
        escape(&title)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markup() {
        assert_eq!(
            inline("a **b** `c<d>` [e](#f) [g](h.svg)"),
            "a <strong>b</strong> <code>c&lt;d&gt;</code> <a href=\"#f\">e</a> g"
        );
        assert_eq!(
            cells("| a \\| b | c |"),
            vec![" a | b ".to_string(), " c ".to_string()]
        );
        let mut taken = BTreeSet::new();
        assert_eq!(
            slug("Verdicts (pre-registered success table)", &mut taken),
            "verdicts-pre-registered-success-table"
        );
        assert_eq!(
            slug("Verdicts (pre-registered success table)", &mut taken),
            "verdicts-pre-registered-success-table-2"
        );
    }
}
