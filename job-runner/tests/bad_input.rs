//! Bad input: one clear error naming the problem (and the fix), exit code 2,
//! and nothing runs.

mod common;

use common::{job, run, run_with_stdin, write};

fn bad(args: &[&str], want: &[&str]) {
    let r = run(args);
    assert_eq!(
        r.code, 2,
        "args {args:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    for w in want {
        assert!(
            r.stderr.contains(w),
            "args {args:?}: want {w:?} in:\n{}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("Created pod"),
        "nothing may run:\n{}",
        r.stderr
    );
}

#[test]
fn misspelt_field_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "j.yaml",
        &job("typo", "", "Never", "true").replace("command:", "comand:"),
    );
    bad(
        &["run", "-f", &f, "--local"],
        &[
            "spec.template.spec.containers[0].comand: unknown field \"comand\"",
            "Job/typo",
            "document 1",
        ],
    );
}

#[test]
fn missing_required_field_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = job("noname", "", "Never", "true")
        .replace("      - name: main\n        image", "      - image");
    let f = write(dir.path(), "j.yaml", &text);
    bad(
        &["run", "-f", &f, "--local"],
        &["spec.template.spec.containers[0].name: Required value"],
    );
}

#[test]
fn refused_spec_is_named_in_kubernetes_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "j.yaml", &job("always", "", "Always", "true"));
    bad(
        &["run", "-f", &f, "--local"],
        &[
            // The API server defaults an empty restartPolicy to Always, so it
            // reports both as required.
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
        ],
    );
    let f = write(
        dir.path(),
        "k.yaml",
        &job(
            "pfp",
            "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {operator: In, values: [0]}\n",
            "Never",
            "true",
        ),
    );
    bad(
        &["run", "-f", &f, "--local"],
        &[
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: 0: must not be 0 for the In operator",
        ],
    );
}

#[test]
fn second_document_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}---\n{}",
        job("ok", "", "Never", "true"),
        job("bad", "  completions: many\n", "Never", "true")
    );
    let f = write(dir.path(), "j.yaml", &text);
    bad(
        &["run", "-f", &f, "--local"],
        &["document 2", "Job/bad", "spec.completions: invalid type"],
    );
}

#[test]
fn missing_file_bad_yaml_and_empty_input() {
    bad(
        &["run", "-f", "/nonexistent/job.yaml", "--local"],
        &["cannot read /nonexistent/job.yaml"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "j.yaml", "apiVersion: batch/v1\nkind: [Job\n");
    bad(&["run", "-f", &f, "--local"], &["not valid YAML"]);
    let f = write(dir.path(), "e.yaml", "# nothing here\n");
    bad(&["run", "-f", &f, "--local"], &["no Job or CronJob found"]);
    let f = write(dir.path(), "k.yaml", "metadata:\n  name: x\n");
    bad(
        &["run", "-f", &f, "--local"],
        &["apiVersion: Required value", "kind: Required value"],
    );
}

#[test]
fn item_template_without_items_says_to_pass_item() {
    let r = run(&["run", "-f", &common::example("job-tmpl.yaml"), "--local"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("uses $ITEM but no item was given; pass --item VALUE"),
        "{}",
        r.stderr
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "plain.yaml", "a: 1\n");
    bad(&["expand", &f], &["not a template"]);
    let f = write(dir.path(), "t.j2", "name: {{ nope }}\n");
    bad(&["expand", &f], &["t.j2", "--set NAME=VALUE"]);
}

#[test]
fn unknown_flag_and_missing_file_flag_are_usage_errors() {
    let r = run(&["run", "--local"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--filename"), "{}", r.stderr);
}

#[test]
fn objects_that_cannot_run_are_named() {
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n---\n{}",
        job("fine", "", "Never", "true")
    );
    let r = run_with_stdin(&["run", "-f", "-", "--local", "-o", "json"], &text);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("<stdin> (document 1): ConfigMap/settings (v1) cannot run locally"),
        "{}",
        r.stderr
    );
}

#[test]
fn unsupported_volume_and_env_source_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = job("vol", "", "Never", "true").replace(
        "        command:",
        "        envFrom:\n        - configMapRef: {name: cm}\n        command:",
    ) + "      volumes:\n      - name: data\n        hostPath: {path: /srv}\n";
    let f = write(dir.path(), "j.yaml", &text);
    bad(
        &["run", "-f", &f, "--local"],
        &[
            "volume \"data\" cannot be provided locally",
            "envFrom: not supported by --local",
        ],
    );
}

#[test]
fn bad_work_queue_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = job("wq", "", "Never", "true").replace(
        "  name: wq\n",
        "  name: wq\n  annotations:\n    workq.dev/queue: q\n",
    );
    let f = write(dir.path(), "j.yaml", &text);
    bad(
        &["run", "-f", &f, "--local"],
        &["workq.dev/queue needs its items", "--queue-url"],
    );
    let f = write(
        dir.path(),
        "k.yaml",
        &text.replace("workq.dev/queue: q", "workq.dev/items: a b"),
    );
    bad(
        &["run", "-f", &f, "--local"],
        &["needs metadata.annotations[workq.dev/queue]"],
    );
}

#[test]
fn bad_cron_schedule_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(common::example("cronjob.yaml"))
        .expect("example")
        .replace("\"* * * * *\"", "\"* * * *\"");
    let f = write(dir.path(), "c.yaml", &text);
    bad(
        &["run", "-f", &f, "--local"],
        &["spec.schedule: Invalid value: \"* * * *\"", "CronJob/hello"],
    );
}

/// A Job with one `downwardAPI` volume `name` holding an item at `path`.
fn downward_job(name: &str, path: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: dw\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: busybox\n        command: [\"true\"]\n      volumes:\n      - name: {name:?}\n        downwardAPI:\n          items:\n          - path: {path:?}\n            fieldRef: {{fieldPath: metadata.name}}\n"
    )
}

#[test]
fn downward_api_paths_outside_the_volume_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, why) in [
        ("../escape", "must not contain '..'"),
        ("a/../../escape", "must not contain '..'"),
        ("/etc/passwd", "must be a relative path"),
    ] {
        let f = write(dir.path(), "j.yaml", &downward_job("info", path));
        bad(
            &["run", "-f", &f, "--local"],
            &[
                "spec.template.spec.volumes[0].downwardAPI.items[0].path",
                &format!("Invalid value: {path:?}"),
                why,
            ],
        );
        bad(
            &["render", "-f", &f],
            &["spec.template.spec.volumes[0].downwardAPI.items[0].path"],
        );
    }
}

#[test]
fn a_volume_name_that_is_not_a_dns_label_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["../up", "Info", "a/b", ""] {
        let f = write(dir.path(), "j.yaml", &downward_job(name, "name"));
        bad(
            &["run", "-f", &f, "--local"],
            &["spec.template.spec.volumes[0].name", "RFC 1123 label"],
        );
    }
}

fn items_file_job(file: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: q\n  annotations:\n    workq.dev/queue: q\n    workq.dev/items-file: {file:?}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: busybox\n        command: [\"wq\", \"consume\", \"--\", \"cat\"]\n"
    )
}

#[test]
fn an_items_file_outside_the_manifest_directory_is_refused_unless_allowed() {
    let outer = tempfile::tempdir().expect("tempdir");
    let secret = write(outer.path(), "secret.txt", "hunter2\n");
    let dir = outer.path().join("manifests");
    std::fs::create_dir(&dir).expect("mkdir");
    for (file, why) in [
        ("../secret.txt", "must not contain '..'"),
        (secret.as_str(), "must be a path relative"),
    ] {
        let f = write(&dir, "j.yaml", &items_file_job(file));
        bad(
            &["render", "-f", &f],
            &[
                "metadata.annotations[workq.dev/items-file]",
                &format!("Invalid value: {file:?}"),
                why,
                "--allow-items-outside",
            ],
        );
        let r = run(&["render", "-f", &f, "--allow-items-outside"]);
        assert_eq!(r.code, 0, "allowed with the flag: {}", r.stderr);
    }
    // A symbolic link out of the directory is outside too.
    std::os::unix::fs::symlink(&secret, dir.join("link.txt")).expect("symlink");
    let f = write(&dir, "j.yaml", &items_file_job("link.txt"));
    bad(
        &["render", "-f", &f],
        &[
            "metadata.annotations[workq.dev/items-file]",
            "symbolic link",
        ],
    );
    // Inside the directory: read.
    write(&dir, "items.txt", "a\nb\n");
    let f = write(&dir, "j.yaml", &items_file_job("items.txt"));
    let r = run(&["render", "-f", &f]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn an_item_cannot_add_fields_to_an_item_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(
        dir.path(),
        "t.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: process-item\n  labels:\n    item: \"$ITEM\"\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox\n        command: [\"echo\", \"$ITEM\"]\n        securityContext:\n          runAsNonRoot: true\n",
    );
    let evil = "x\n  privileged: true";
    let r = run(&["expand", &f, "--item", evil]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&r.stdout).expect("YAML");
    let c = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"][1], evil, "{}", r.stdout);
    assert_eq!(
        c["securityContext"],
        serde_json::json!({"runAsNonRoot": true})
    );
    assert_eq!(docs[0]["metadata"]["labels"]["item"], evil);
}
