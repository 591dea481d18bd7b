//! `deploy/`: every manifest is valid against the official Kubernetes 1.35
//! OpenAPI schema (strict: unknown fields rejected) and deserializes into the
//! `k8s-openapi` types with no field dropped; the kustomizations list them all,
//! and `deploy/` and `deploy/ha/` render with `kubectl kustomize`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The directories of examples that are custom resources (cert-manager's
/// Certificate and Issuer, CloudNativePG's Cluster; KEDA's, checked by `tests/keda.rs`),
/// checked apart from the built-in kinds.
const CRD_EXAMPLES: &[&str] = &["cert-manager", "cloudnative-pg", "keda"];

/// Every `.yaml` under `deploy/` that is a built-in Kubernetes object (not
/// the kustomization itself, nor the custom resources' examples).
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read deploy dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            // Custom resources (cert-manager's): not in the built-in schema.
            if p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| CRD_EXAMPLES.contains(&n))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    assert!(!out.is_empty(), "no manifests under deploy/");
    out
}

#[test]
fn every_manifest_validates_against_the_official_schema() {
    if !workq_testkit::kubernetes_validate() {
        return;
    }
    let files = manifests();
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{} files valid against Kubernetes 1.35", files.len());
}

/// Paths present in `orig` but missing from `back` (fields the typed
/// deserialization did not know).
fn dropped(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => dropped(v, w, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, v) in a.iter().enumerate() {
                match b.get(i) {
                    Some(w) => dropped(v, w, &format!("{path}[{i}]"), out),
                    None => out.push(format!("{path}[{i}]")),
                }
            }
        }
        _ => {}
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

#[test]
fn every_manifest_deserializes_into_k8s_types_with_no_unknown_field() {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, core::v1 as core, networking::v1 as net,
        rbac::v1 as rbac,
    };
    let mut checked = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let back = match kind.as_str() {
                "Namespace" => round_trip::<core::Namespace>(&doc),
                "Service" => round_trip::<core::Service>(&doc),
                "ServiceAccount" => round_trip::<core::ServiceAccount>(&doc),
                "Secret" => round_trip::<core::Secret>(&doc),
                "NetworkPolicy" => round_trip::<net::NetworkPolicy>(&doc),
                "StatefulSet" => round_trip::<apps::StatefulSet>(&doc),
                "Deployment" => round_trip::<apps::Deployment>(&doc),
                "PodDisruptionBudget" => {
                    round_trip::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&doc)
                }
                "Role" => round_trip::<rbac::Role>(&doc),
                "RoleBinding" => round_trip::<rbac::RoleBinding>(&doc),
                "Job" => round_trip::<batch::Job>(&doc),
                "CronJob" => round_trip::<batch::CronJob>(&doc),
                other => panic!(
                    "{}: kind {other:?} has no check here; add it",
                    file.display()
                ),
            }
            .unwrap_or_else(|e| panic!("{} ({kind}): {e}", file.display()));
            let mut missing = Vec::new();
            dropped(&doc, &back, "", &mut missing);
            assert!(
                missing.is_empty(),
                "{} ({kind}): unknown fields {missing:?}",
                file.display()
            );
            checked += 1;
        }
    }
    println!("{checked} objects checked");
}

/// The `resources` a kustomization.yaml lists.
fn kustomization_resources(dir: &Path) -> Vec<String> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let k: Value = serde_saphyr::from_str(&text).expect("yaml");
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_kustomizations_list_every_deploy_manifest() {
    for f in manifests() {
        let rel = f.strip_prefix(deploy_dir()).expect("under deploy");
        if rel.starts_with("examples") {
            continue;
        }
        let dir = f.parent().expect("in a directory");
        let name = f.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert!(
            kustomization_resources(dir).iter().any(|r| r == name),
            "{}/kustomization.yaml does not list {name}",
            dir.display()
        );
    }
    // deploy/ takes the queue service and job-runner whole.
    let root = kustomization_resources(&deploy_dir());
    for part in ["queue-server", "job-runner"] {
        assert!(
            root.iter().any(|r| r == part),
            "deploy/ does not list {part}"
        );
    }
}

/// `kubectl kustomize DIR`, parsed.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    if !workq_testkit::command("kubectl", "apt-get install kubernetes-client") {
        return None;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    Some(
        serde_saphyr::from_multiple::<Value>(&text)
            .expect("yaml")
            .into_iter()
            .filter(|d| !d.is_null())
            .collect(),
    )
}

#[test]
fn deploy_renders_one_statefulset_on_the_embedded_store() {
    let Some(objs) = kustomize(&deploy_dir()) else {
        return;
    };
    let kinds = |k: &str| objs.iter().filter(|o| o["kind"] == k).count();
    assert_eq!(kinds("StatefulSet"), 1);
    assert_eq!(kinds("Deployment"), 0);
    let sts = object(&objs, "StatefulSet", "workq", "workq");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "workq/queue-server:0.1.0"
    );
}

#[test]
fn deploy_ha_renders_three_replicas_on_postgres_and_validates() {
    let ha = deploy_dir().join("ha");
    let Some(objs) = kustomize(&ha) else {
        return;
    };
    // The StatefulSet and its claim are gone; the rest of deploy/ stays.
    assert!(!objs.iter().any(|o| o["kind"] == "StatefulSet"));
    for (kind, name) in [
        ("NetworkPolicy", "workq-grpc"),
        ("Secret", "workq-auth"),
        ("Service", "workq"),
        ("Service", "workq-headless"),
        ("NetworkPolicy", "workq-db"),
    ] {
        object(&objs, kind, "workq", name);
    }
    let dep = object(&objs, "Deployment", "workq", "workq");
    assert_eq!(dep["spec"]["replicas"], 3);
    let pod = &dep["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "workq/queue-server:0.1.0");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--store=postgres",
        "--tls-cert=/tls/tls.crt",
        "--auth-audience=workq",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.contains("postgres://")),
        "the database URL (with its password) is not on the command line: {args:?}"
    );
    let url = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "WQ_DATABASE_URL")
        .expect("WQ_DATABASE_URL");
    assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "workq-db-app");
    // TLS to the database, the certificate checked against the cluster's CA
    // (the file mounted from the CA Secret's ca.crt only).
    let env = |name: &str| {
        container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_string()
    };
    assert_eq!(env("PGSSLMODE"), "verify-full");
    let root = env("PGSSLROOTCERT");
    let ca = pod["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .find(|v| v["secret"]["secretName"] == "workq-db-ca")
        })
        .expect("the database CA volume");
    assert_eq!(
        ca["secret"]["items"][0]["key"], "ca.crt",
        "only the CA certificate"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == ca["name"]))
        .expect("the database CA mounted");
    assert!(
        root.starts_with(mount["mountPath"].as_str().expect("path")),
        "{root} is in the mounted CA volume"
    );
    // Ready from health (which turns when the database is lost); spread over
    // nodes; at most one replica taken by a drain.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .expect("spread")
            .iter()
            .any(|c| c["topologyKey"] == "kubernetes.io/hostname"
                && c["whenUnsatisfiable"] == "DoNotSchedule")
    );
    let pdb = object(&objs, "PodDisruptionBudget", "workq", "workq");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    assert!(
        pod["volumes"]
            .as_array()
            .is_some_and(|v| !v.iter().any(|v| v.get("persistentVolumeClaim").is_some()))
    );

    // The rendered whole is valid against the official schema.
    if !workq_testkit::kubernetes_validate() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rendered = dir.path().join("ha.yaml");
    let text: Vec<String> = objs
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect();
    // JSON is YAML: one document per object.
    std::fs::write(&rendered, text.join("\n---\n")).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .arg(&rendered)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "deploy/ha/ does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cloudnative_pg_example_makes_the_secret_deploy_ha_reads() {
    let text = std::fs::read_to_string(
        deploy_dir()
            .join("examples")
            .join("cloudnative-pg")
            .join("cluster.yaml"),
    )
    .expect("read");
    let cluster: Value = serde_saphyr::from_str(&text).expect("yaml");
    assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
    assert_eq!(cluster["kind"], "Cluster");
    // CloudNativePG names the application user's Secret <cluster>-app.
    assert_eq!(cluster["metadata"]["name"], "workq-db");
    assert_eq!(cluster["metadata"]["namespace"], "workq");
    let sync = &cluster["spec"]["postgresql"]["synchronous"];
    assert_eq!(sync["method"], "any");
    assert_eq!(sync["number"], 1);
    assert_eq!(sync["dataDurability"], "required");
    assert_eq!(cluster["spec"]["instances"], 3);
}

#[test]
fn the_round_trip_check_catches_a_misspelt_field() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      \
         restartPolicy: Never\n      containers: [{name: c, image: busybox, comand: [echo]}]\n",
    )
    .expect("yaml");
    let back = round_trip::<k8s_openapi::api::batch::v1::Job>(&doc).expect("typed");
    let mut missing = Vec::new();
    dropped(&doc, &back, "", &mut missing);
    assert_eq!(missing, vec![".spec.template.spec.containers[0].comand"]);
}

/// Every object of `deploy/queue-server/` and `deploy/job-runner/`, parsed.
fn deploy_objects() -> Vec<Value> {
    manifests()
        .into_iter()
        .filter(|f| {
            !f.strip_prefix(deploy_dir())
                .is_ok_and(|r| r.starts_with("examples") || r.starts_with("ha"))
        })
        .flat_map(|f| {
            let text = std::fs::read_to_string(&f).expect("read");
            serde_saphyr::from_multiple::<Value>(&text).expect("yaml")
        })
        .filter(|d| !d.is_null())
        .collect()
}

fn object<'a>(objs: &'a [Value], kind: &str, ns: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind && o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("no {kind} {ns}/{name} in deploy/"))
}

#[test]
fn deploy_is_locked_down() {
    let objs = deploy_objects();
    // Only workers and job-runner reach gRPC; only `monitoring` reaches /metrics.
    let grpc = object(&objs, "NetworkPolicy", "workq", "workq-grpc");
    let from = &grpc["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["workq.dev/worker"],
        "true"
    );
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "job-runner"
    );
    assert_eq!(grpc["spec"]["ingress"][0]["ports"][0]["port"], 50051);
    let metrics = object(&objs, "NetworkPolicy", "workq", "workq-metrics");
    assert_eq!(
        metrics["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(metrics["spec"]["ingress"][0]["ports"][0]["port"], 9464);
    // TLS, authentication and grants turned on, from Secrets.
    let sts = object(&objs, "StatefulSet", "workq", "workq");
    let pod = &sts["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--tls-cert=/tls/tls.crt",
        "--tls-key=/tls/tls.key",
        "--auth-tokens-file=/auth/tokens.yaml",
        "--auth-audience=workq",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    let secrets: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["workq-tls", "workq-auth"]);
    assert!(
        args.contains(&"--auth-jwks-file=/jwks/jwks.json"),
        "{args:?}"
    );
    assert_eq!(pod["serviceAccountName"], "workq");
    assert_eq!(
        object(&objs, "ServiceAccount", "workq", "workq")["automountServiceAccountToken"],
        false
    );
    object(&objs, "Secret", "workq", "workq-auth");
    let limits = &pod["containers"][0]["resources"]["limits"];
    assert!(limits["cpu"].is_string() && limits["ephemeral-storage"].is_string());
    // No API token where none is needed.
    assert_eq!(
        object(&objs, "ServiceAccount", "workq", "default")["automountServiceAccountToken"],
        false
    );
    // job-runner's Role is in the Jobs' namespace, not the queue service's.
    let role = object(&objs, "Role", "workq-jobs", "job-runner");
    assert!(role["rules"].as_array().is_some_and(|r| !r.is_empty()));
    assert!(
        !objs
            .iter()
            .any(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "workq"),
        "no Role in the queue service's namespace"
    );
}

#[test]
fn the_cert_manager_example_makes_the_tls_secret_the_statefulset_mounts() {
    let text = std::fs::read_to_string(
        deploy_dir()
            .join("examples")
            .join("cert-manager")
            .join("certificate.yaml"),
    )
    .expect("read");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
    let cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == "workq")
        .expect("the service's Certificate");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["secretName"], "workq-tls");
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "workq.workq.svc"))
    );
}
