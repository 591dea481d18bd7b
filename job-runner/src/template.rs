//! Expansions: one template, many manifests (the tutorial's "Parallel
//! Processing using Expansions").
//!
//! Two kinds of template are understood:
//!
//! - **`$ITEM` templates** (the tutorial's `sed "s/\$ITEM/$i/"`): the
//!   template is parsed as YAML first, then every `$ITEM` (or `${ITEM}`) in
//!   its string values (and keys) is replaced by an item, once per `--item`;
//!   the copies are written out as YAML documents. Unlike `sed`, which
//!   splices the item into the text, an item holding a newline, a quote or
//!   `: ` stays inside the one string it was put in: it cannot add a field
//!   (`x\n  privileged: true` is a name, not a security setting). A
//!   `$ITEM` where YAML expects a number stays a string.
//! - **Jinja templates** (files ending in `.jinja2`, `.jinja` or `.j2`),
//!   rendered with [`minijinja`]. With `--item`, the template is rendered once
//!   per item with `item` set; without, once. `items` (the list of all items)
//!   and every `--set NAME=VALUE` are variables too.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// What to fill templates with.
#[derive(Debug, Clone, Default)]
pub struct TemplateOptions {
    /// The values of `$ITEM` (or Jinja's `item`), one copy of the template each.
    pub items: Vec<String>,
    /// Extra Jinja variables (`--set NAME=VALUE`).
    pub vars: BTreeMap<String, String>,
}

/// Whether a file name names a Jinja template.
pub fn is_jinja(name: &str) -> bool {
    [".jinja2", ".jinja", ".j2"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Whether a text uses the `$ITEM` placeholder.
pub fn uses_item(text: &str) -> bool {
    text.contains("$ITEM") || text.contains("${ITEM}")
}

/// Parses `NAME=VALUE` as given to `--set`.
pub fn parse_var(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "`{s}` is not NAME=VALUE (for example --set size=large)"
        )),
    }
}

/// Expands a template into YAML text (possibly several documents).
///
/// A text that is neither a Jinja template nor uses `$ITEM` comes back as it
/// is. A `$ITEM` template without items is an error that says to pass
/// `--item`.
pub fn expand(source_name: &str, text: &str, opts: &TemplateOptions) -> Result<String> {
    if is_jinja(source_name) {
        return render_jinja(source_name, text, opts);
    }
    if !uses_item(text) {
        return Ok(text.to_string());
    }
    if opts.items.is_empty() {
        return Err(Error::Template {
            source_name: source_name.to_string(),
            message: "this template uses $ITEM but no item was given; pass --item VALUE once per item (for example --item apple --item banana)".into(),
        });
    }
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| Error::Template {
            source_name: source_name.to_string(),
            message: format!("the $ITEM template is not YAML: {e}"),
        })?;
    let mut copies = Vec::new();
    for item in &opts.items {
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let mut doc = doc.clone();
            substitute(&mut doc, item);
            copies.push(serde_saphyr::to_string(&doc).map_err(|e| Error::Template {
                source_name: source_name.to_string(),
                message: format!("cannot write the expanded manifest: {e}"),
            })?);
        }
    }
    Ok(join_documents(&copies))
}

/// Replaces `$ITEM` and `${ITEM}` by `item` in every string of `v` (keys
/// too), leaving its structure as it is.
fn substitute(v: &mut serde_json::Value, item: &str) {
    let replace = |s: &str| s.replace("${ITEM}", item).replace("$ITEM", item);
    match v {
        serde_json::Value::String(s) if uses_item(s) => *s = replace(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, item)),
        serde_json::Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut x) in old {
                substitute(&mut x, item);
                m.insert(if uses_item(&k) { replace(&k) } else { k }, x);
            }
        }
        _ => {}
    }
}

fn join_documents(docs: &[String]) -> String {
    let mut out = String::new();
    for doc in docs {
        if !out.is_empty() {
            out.push_str("\n---\n");
        }
        out.push_str(doc.trim_end());
        out.push('\n');
    }
    out
}

fn render_jinja(source_name: &str, text: &str, opts: &TemplateOptions) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let template = env
        .template_from_str(text)
        .map_err(|e| jinja_error(source_name, &e))?;
    let mut base: BTreeMap<String, minijinja::Value> = opts
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
        .collect();
    base.insert("items".into(), minijinja::Value::from(opts.items.clone()));
    let render = |ctx: &BTreeMap<String, minijinja::Value>| {
        template
            .render(ctx)
            .map_err(|e| jinja_error(source_name, &e))
    };
    if opts.items.is_empty() {
        return render(&base);
    }
    let mut copies = Vec::new();
    for item in &opts.items {
        let mut ctx = base.clone();
        ctx.insert("item".into(), minijinja::Value::from(item.as_str()));
        ctx.insert("ITEM".into(), minijinja::Value::from(item.as_str()));
        copies.push(render(&ctx)?);
    }
    Ok(join_documents(&copies))
}

fn jinja_error(source_name: &str, e: &minijinja::Error) -> Error {
    let mut message = format!("Jinja template error: {e}");
    if let Some(line) = e.line() {
        message = format!("line {line}: {message}");
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        message.push_str(" (give it with --set NAME=VALUE, or --item for `item`)");
    }
    Error::Template {
        source_name: source_name.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests;
