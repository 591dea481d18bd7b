use super::*;

fn parse(text: &str) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    parse_text(
        "t.yaml",
        Path::new("."),
        text,
        &TemplateOptions::default(),
        &mut loaded,
    )?;
    Ok(loaded)
}

const JOB: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: pi\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n        command: [\"true\"]\n";

#[test]
fn reads_a_job() {
    let loaded = parse(JOB).expect("parses");
    assert_eq!(loaded.manifests.len(), 1);
    assert!(matches!(loaded.manifests[0].object, Object::Job(_)));
}

#[test]
fn misspelt_field_is_named_with_its_path() {
    let text = JOB.replace("command:", "comand:");
    let err = parse(&text).expect_err("unknown field");
    let msg = err.to_string();
    assert!(
        msg.contains("spec.template.spec.containers[0].comand: unknown field \"comand\""),
        "{msg}"
    );
    assert!(
        msg.contains("Job/pi") && msg.contains("document 1"),
        "{msg}"
    );
    assert!(err.is_bad_input());
}

#[test]
fn missing_required_field_is_named() {
    let text = JOB.replace("      - name: c\n        image", "      - image");
    let err = parse(&text).expect_err("missing name");
    let msg = err.to_string();
    assert!(
        msg.contains("spec.template.spec.containers[0].name: Required value"),
        "{msg}"
    );
}

#[test]
fn wrong_type_is_named() {
    let text = JOB.replace(
        "spec:\n  template",
        "spec:\n  completions: many\n  template",
    );
    let msg = parse(&text).expect_err("wrong type").to_string();
    assert!(msg.contains("spec.completions: invalid type"), "{msg}");
}

#[test]
fn several_documents_and_other_kinds() {
    let text = format!(
        "{JOB}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: None\n"
    );
    let loaded = parse(&text).expect("parses");
    assert_eq!(loaded.manifests.len(), 2);
    assert_eq!(loaded.skipped.len(), 1);
    assert!(
        loaded.skipped[0].contains("ConfigMap/cm"),
        "{:?}",
        loaded.skipped
    );
}

#[test]
fn missing_kind_and_bad_yaml() {
    let msg = parse("metadata:\n  name: x\n")
        .expect_err("no kind")
        .to_string();
    assert!(
        msg.contains("apiVersion: Required value") && msg.contains("kind: Required value"),
        "{msg}"
    );
    let err = parse("a: [1, 2\n").expect_err("bad yaml");
    assert!(matches!(err, Error::Yaml { .. }), "{err}");
}

#[test]
fn reads_directories_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("b.yaml"),
        JOB.replace("name: pi", "name: b"),
    )
    .expect("write");
    std::fs::write(dir.path().join("a.yml"), JOB.replace("name: pi", "name: a")).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
    let loaded = load(
        &[dir.path().display().to_string()],
        &TemplateOptions::default(),
        &mut std::io::empty(),
    )
    .expect("loads");
    let names: Vec<_> = loaded
        .manifests
        .iter()
        .map(|m| match &m.object {
            Object::Job(j) => j.metadata.name.clone().unwrap_or_default(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn reads_stdin_and_names_a_missing_file() {
    let loaded = load(
        &["-".into()],
        &TemplateOptions::default(),
        &mut JOB.as_bytes(),
    )
    .expect("stdin");
    assert_eq!(loaded.manifests.len(), 1);
    let err = load(
        &["/nonexistent/x.yaml".into()],
        &TemplateOptions::default(),
        &mut std::io::empty(),
    )
    .expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/x.yaml"), "{err}");
}
