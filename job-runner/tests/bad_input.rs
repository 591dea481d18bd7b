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
