use super::*;

fn items(v: &[&str]) -> TemplateOptions {
    TemplateOptions {
        items: v.iter().map(|s| s.to_string()).collect(),
        vars: BTreeMap::new(),
    }
}

#[test]
fn item_template_makes_one_document_per_item() {
    let out = expand(
        "t.yaml",
        "name: process-item-$ITEM\nx: ${ITEM}\n",
        &items(&["apple", "banana"]),
    )
    .expect("expands");
    assert_eq!(
        out,
        "name: process-item-apple\nx: apple\n\n---\nname: process-item-banana\nx: banana\n"
    );
}

#[test]
fn an_item_with_a_newline_stays_one_string_value() {
    let t = "spec:\n  containers:\n  - name: c\n    args: [\"$ITEM\"]\n    securityContext:\n      runAsNonRoot: true\n";
    let evil = "x\n  privileged: true";
    let out = expand("t.yaml", t, &items(&[evil, "y\" , privileged: true"])).expect("expands");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).expect("YAML");
    assert_eq!(docs.len(), 2);
    let c = &docs[0]["spec"]["containers"][0];
    assert_eq!(
        c["args"][0],
        serde_json::Value::String(evil.into()),
        "{out}"
    );
    assert_eq!(
        c["securityContext"],
        serde_json::json!({"runAsNonRoot": true}),
        "{out}"
    );
    assert!(c.get("privileged").is_none(), "{out}");
    let c = &docs[1]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "y\" , privileged: true", "{out}");
    assert_eq!(c.as_object().map(|o| o.len()), Some(3), "{out}");
}

#[test]
fn item_template_without_items_says_to_pass_item() {
    let err = expand("t.yaml", "name: a-$ITEM", &items(&[])).expect_err("needs items");
    assert!(err.to_string().contains("--item"), "{err}");
    assert!(err.is_bad_input());
}

#[test]
fn plain_text_is_unchanged() {
    let out = expand("t.yaml", "a: 1\n", &items(&["x"])).expect("plain");
    assert_eq!(out, "a: 1\n");
}

#[test]
fn jinja_loops_and_items() {
    let t = "{% for p in ['apple', 'banana'] %}\n---\nname: jobexample-{{ p }}\n{% endfor %}";
    let out = expand("job.yaml.jinja2", t, &items(&[])).expect("renders");
    assert!(out.contains("name: jobexample-apple") && out.contains("name: jobexample-banana"));
    let out = expand(
        "t.j2",
        "name: {{ item }}-{{ size }}",
        &TemplateOptions {
            items: vec!["a".into(), "b".into()],
            vars: [("size".to_string(), "big".to_string())].into(),
        },
    )
    .expect("renders");
    assert!(
        out.contains("name: a-big") && out.contains("name: b-big"),
        "{out}"
    );
}

#[test]
fn jinja_undefined_variable_is_named() {
    let err = expand("t.j2", "name: {{ nope }}", &items(&[])).expect_err("undefined");
    let text = err.to_string();
    assert!(text.contains("t.j2") && text.contains("--set"), "{text}");
}

#[test]
fn set_parses_name_value() {
    assert_eq!(parse_var("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(parse_var("novalue").is_err());
}
