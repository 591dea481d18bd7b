//! The cluster side of the command line, with no cluster: `render` output
//! checked against the official Kubernetes schema and read back strictly
//! into the k8s-openapi types; `--help`; the errors for a missing cluster
//! and bad flags.

mod common;

use std::process::Command;

use common::{Run, example, job_runner};

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = job_runner();
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("job-runner starts").into()
}

/// Every example, as `render` prints it (items for the $ITEM template).
fn rendered() -> Vec<(String, String)> {
    let dir = common::repo().join("deploy/examples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/examples")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".jinja2"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    files
        .into_iter()
        .map(|f| {
            let r = run_env(
                &[
                    "render",
                    "-f",
                    &example(&f),
                    "--run-id",
                    "r1",
                    "--item",
                    "apple",
                    "--item",
                    "banana",
                ],
                &[],
            );
            assert_eq!(r.code, 0, "{f}: {}", r.stderr);
            (f, r.stdout)
        })
        .collect()
}

#[test]
fn rendered_examples_validate_against_the_official_schema() {
    if !workq_testkit::kubernetes_validate() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (f, text) in rendered() {
        let path = dir.path().join(format!("{f}.rendered.yaml"));
        std::fs::write(&path, text).expect("write");
        paths.push(path);
    }
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .args(&paths)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It can fail: a misspelt field is caught.
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&paths[0]).expect("read").replacen(
        "restartPolicy",
        "restartPolicyy",
        1,
    );
    std::fs::write(&bad, text).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "the validator rejects an unknown field"
    );
}

#[test]
fn rendered_examples_read_back_strictly_into_kubernetes_types() {
    for (f, text) in rendered() {
        let mut loaded = job_runner::manifest::Loaded::default();
        job_runner::manifest::parse_text(
            &f,
            std::path::Path::new("."),
            &text,
            &Default::default(),
            &mut loaded,
        )
        .unwrap_or_else(|e| panic!("{f}: {e}\n{text}"));
        assert!(loaded.skipped.is_empty(), "{f}: {:?}", loaded.skipped);
        assert!(!loaded.manifests.is_empty(), "{f}");
        // And to the k8s-openapi types with no field lost: serialize again, compare.
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("yaml");
        for (doc, m) in docs.iter().zip(&loaded.manifests) {
            let again = match &m.object {
                job_runner::manifest::Object::Job(j) => serde_json::to_value(j),
                job_runner::manifest::Object::CronJob(c) => serde_json::to_value(c),
                job_runner::manifest::Object::Service(s) => serde_json::to_value(s),
            }
            .expect("json");
            assert_eq!(&again, doc, "{f}: round trip");
            assert_eq!(doc["metadata"]["labels"]["workq.dev/run"], "r1", "{f}");
        }
    }
}

#[test]
fn render_injects_the_wrapper_into_work_queue_jobs_only() {
    let r = run_env(
        &[
            "render",
            "-f",
            &example("coarse-queue.yaml"),
            "--run-id",
            "x",
            "-o",
            "json",
            "--pod-queue-url",
            "grpc://q.ns.svc:50051",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let job = &r.json()["items"][0];
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(job["spec"]["completions"], 8, "one per item");
    assert_eq!(pod["initContainers"][0]["name"], "workq-wrapper");
    assert_eq!(
        pod["initContainers"][0]["command"],
        serde_json::json!(["cp", "/usr/local/bin/wq", "/workq/bin/wq"])
    );
    assert_eq!(
        pod["containers"][0]["command"],
        serde_json::json!(["/workq/bin/wq", "consume", "-c", "1", "--"])
    );
    assert_eq!(
        pod["containers"][0]["env"],
        serde_json::json!([{"name": "WQ_URL", "value": "grpc://q.ns.svc:50051"}, {"name": "WQ_QUEUE", "value": "job1"}])
    );
    assert_eq!(
        pod["volumes"][0],
        serde_json::json!({"name": "workq-bin", "emptyDir": {}})
    );

    let r = run_env(
        &[
            "render",
            "-f",
            &example("coarse-queue.yaml"),
            "--no-inject",
            "-o",
            "json",
        ],
        &[],
    );
    let pod = &r.json()["items"][0]["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null(), "{pod}");
    assert_eq!(pod["containers"][0]["command"][0], "wq");

    let r = run_env(
        &["render", "-f", &example("indexed-job.yaml"), "-o", "json"],
        &[],
    );
    let pod = &r.json()["items"][0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"].as_array().map(Vec::len),
        Some(1),
        "only its own"
    );
}

#[test]
fn without_a_cluster_run_names_the_fixes() {
    let home = tempfile::tempdir().expect("tempdir");
    let r = run_env(
        &["run", "-f", &example("indexed-job.yaml")],
        &[
            ("HOME", &home.path().display().to_string()),
            (
                "KUBECONFIG",
                &home.path().join("nope").display().to_string(),
            ),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no cluster to talk to"), "{}", r.stderr);
    assert!(r.stderr.contains("KUBECONFIG"), "{}", r.stderr);
    assert!(r.stderr.contains("add --local"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one clear error: {}", r.stderr);
}

#[test]
fn an_empty_selector_is_refused() {
    for sub in [&["delete"][..], &["logs"], &["get", "jobs"]] {
        let mut args = sub.to_vec();
        args.extend(["-l", ""]);
        let r = run_env(&args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("would select everything"), "{}", r.stderr);
    }
}

#[test]
fn cluster_subcommands_and_flags_have_help() {
    for (args, flags) in [
        (
            vec!["run", "--help"],
            vec![
                "--context",
                "--namespace",
                "--queue-url",
                "--pod-queue-url",
                "--wrapper-image",
                "--no-inject",
                "--timeout",
                "--follow",
                "--keep-idle-pods",
                "--idle-grace",
            ],
        ),
        (
            vec!["render", "--help"],
            vec!["--filename", "--run-id", "--no-inject", "--output"],
        ),
        (vec!["get", "--help"], vec!["--selector", "--namespace"]),
        (vec!["logs", "--help"], vec!["--selector", "--follow"]),
        (vec!["delete", "--help"], vec!["--selector", "--context"]),
    ] {
        let r = run_env(&args, &[]);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        for f in flags {
            assert!(r.stdout.contains(f), "{args:?}: {f} in\n{}", r.stdout);
        }
    }
}

#[test]
fn kubeconfig_context_and_unreachable_cluster_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\ncontexts:\n- name: a\n  context: {{cluster: c, user: u, namespace: team}}\nusers:\n- name: u\n  user: {{token: t}}\n"
        ),
    )
    .expect("write");
    let env = [("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))];
    let r = run_env(&["get", "jobs", "-l", "a=b", "--context", "nope"], &env);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot use context \"nope\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("kubectl config get-contexts"),
        "{}",
        r.stderr
    );

    let r = run_env(&["delete", "-l", "a=b"], &env);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("listing jobs"), "{}", r.stderr);
    assert!(r.stderr.contains("cannot be reached"), "{}", r.stderr);
    assert!(r.stderr.contains("kubectl cluster-info"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one clear error: {}", r.stderr);
}

#[test]
fn render_for_a_secured_queue_service_mounts_the_projected_token_and_the_ca() {
    let r = run_env(
        &[
            "render",
            "-f",
            &example("fine-queue.yaml"),
            "--run-id",
            "r1",
            "--pod-queue-url",
            "grpcs://workq.workq.svc:50051",
            "--pod-ca-configmap",
            "workq-ca",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let job = v["items"]
        .as_array()
        .and_then(|i| i.iter().find(|o| o["kind"] == "Job"))
        .unwrap_or(&v);
    let tmpl = &job["spec"]["template"];
    assert_eq!(tmpl["metadata"]["labels"]["workq.dev/worker"], "true");
    let volumes = tmpl["spec"]["volumes"].as_array().expect("volumes");
    let token = volumes
        .iter()
        .find(|v| v["name"] == "workq-token")
        .expect("the projected token volume");
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], "workq");
    assert_eq!(sat["path"], "token");
    let ca = volumes
        .iter()
        .find(|v| v["name"] == "workq-ca")
        .expect("the CA volume");
    assert_eq!(ca["configMap"]["name"], "workq-ca");
    let c = &tmpl["spec"]["containers"][0];
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for want in [
        ("WQ_URL", "grpcs://workq.workq.svc:50051"),
        ("WQ_TOKEN_FILE", "/var/run/secrets/workq/token"),
        ("WQ_CA_FILE", "/var/run/secrets/workq-ca/ca.crt"),
    ] {
        assert!(
            env.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {env:?}"
        );
    }
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["name"] == "workq-token"
        && m["mountPath"] == "/var/run/secrets/workq"
        && m["readOnly"] == true));

    // A plain grpc:// URL gets no token unless asked (--pod-token).
    let plain = run_env(
        &[
            "render",
            "-f",
            &example("fine-queue.yaml"),
            "--run-id",
            "r1",
        ],
        &[],
    );
    assert!(!plain.stdout.contains("workq-token"), "{}", plain.stdout);
    let asked = run_env(
        &[
            "render",
            "-f",
            &example("fine-queue.yaml"),
            "--run-id",
            "r1",
            "--pod-token",
        ],
        &[],
    );
    assert!(asked.stdout.contains("workq-token"), "{}", asked.stdout);

    // And the YAML validates against the official schema.
    if !workq_testkit::kubernetes_validate() {
        return;
    }
    let yaml = run_env(
        &[
            "render",
            "-f",
            &example("fine-queue.yaml"),
            "--run-id",
            "r1",
            "--pod-queue-url",
            "grpcs://workq.workq.svc:50051",
            "--pod-ca-secret",
            "workq-ca",
        ],
        &[],
    );
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secured.yaml");
    std::fs::write(&path, &yaml.stdout).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        yaml.stdout
    );
}
