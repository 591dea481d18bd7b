//! `deploy/examples/keda/`: KEDA's custom resources parse into typed structs
//! of the CRDs' fields with no unknown field, name what the scaler reads
//! (queue, count, target, a TriggerAuthentication that exists), and their
//! built-in parts (the Deployment, the Secret, and each ScaledJob's Job
//! template as a `batch/v1` Job) validate with `kubernetes-validate
//! --strict` against Kubernetes 1.35.
//!
//! The structs follow KEDA's published CRD schemas (v2.17,
//! `config/crd/bases/keda.sh_{scaledjobs,scaledobjects,triggerauthentications}.yaml`
//! in github.com/kedacore/keda): every field the schemas list at the levels
//! modelled here, so a misspelt field fails to parse.

// The structs mirror the CRDs: fields are there to be recognised, not read.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn keda_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/keda")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ObjectMeta {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// `spec.triggers[]` of ScaledJob and ScaledObject.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Trigger {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    authentication_ref: Option<AuthenticationRef>,
    #[serde(default)]
    use_cached_metrics: Option<bool>,
    #[serde(default)]
    metric_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AuthenticationRef {
    name: String,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledJob {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ScaledJobSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledJobSpec {
    /// A `batch/v1` JobSpec: checked by kubernetes-validate as a Job.
    job_target_ref: Value,
    #[serde(default)]
    polling_interval: Option<i32>,
    #[serde(default)]
    successful_jobs_history_limit: Option<i32>,
    #[serde(default)]
    failed_jobs_history_limit: Option<i32>,
    #[serde(default)]
    env_source_container_name: Option<String>,
    #[serde(default)]
    min_replica_count: Option<i32>,
    #[serde(default)]
    max_replica_count: Option<i32>,
    #[serde(default)]
    rollout: Option<Value>,
    #[serde(default)]
    rollout_strategy: Option<String>,
    #[serde(default)]
    scaling_strategy: Option<ScalingStrategy>,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScalingStrategy {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    custom_scaling_queue_length_deduction: Option<i32>,
    #[serde(default)]
    custom_scaling_running_job_percentage: Option<String>,
    #[serde(default)]
    pending_pod_conditions: Vec<String>,
    #[serde(default)]
    multiple_scalers_calculation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledObject {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ScaledObjectSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaledObjectSpec {
    scale_target_ref: ScaleTargetRef,
    #[serde(default)]
    polling_interval: Option<i32>,
    #[serde(default)]
    initial_cooldown_period: Option<i32>,
    #[serde(default)]
    cooldown_period: Option<i32>,
    #[serde(default)]
    idle_replica_count: Option<i32>,
    #[serde(default)]
    min_replica_count: Option<i32>,
    #[serde(default)]
    max_replica_count: Option<i32>,
    #[serde(default)]
    fallback: Option<Value>,
    #[serde(default)]
    advanced: Option<Value>,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScaleTargetRef {
    name: String,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    env_source_container_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerAuthentication {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: TriggerAuthenticationSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerAuthenticationSpec {
    #[serde(default)]
    pod_identity: Option<Value>,
    #[serde(default)]
    secret_target_ref: Vec<SecretTargetRef>,
    #[serde(default)]
    env: Vec<Value>,
    #[serde(default)]
    config_map_target_ref: Vec<Value>,
    #[serde(default)]
    hashi_corp_vault: Option<Value>,
    #[serde(default)]
    azure_key_vault: Option<Value>,
    #[serde(default)]
    aws_secret_manager: Option<Value>,
    #[serde(default)]
    gcp_secret_manager: Option<Value>,
    #[serde(default)]
    bound_service_account_token: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretTargetRef {
    parameter: String,
    name: String,
    key: String,
}

/// Every document of every file, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(keda_dir())
        .expect("deploy/examples/keda")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no KEDA examples");
    files
        .into_iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(&f).expect("read");
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
            docs.into_iter()
                .filter(|d| !d.is_null())
                .map(move |d| (f.clone(), d))
        })
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(file: &Path, doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{} ({}): {e}",
            file.display(),
            doc["kind"].as_str().unwrap_or("?")
        )
    })
}

/// What the scaler reads from a trigger: a queue, a count it knows, a
/// target of 1 or more, KEDA's address of the service, and a
/// TriggerAuthentication of the examples.
fn check_trigger(t: &Trigger, auths: &[String]) -> String {
    assert_eq!(t.kind, "external-push", "StreamIsActive pushes flips");
    assert_eq!(
        t.metadata.get("scalerAddress").map(String::as_str),
        Some("workq.workq.svc:50051")
    );
    let count = t.metadata.get("count").expect("count").clone();
    assert!(["pending", "pending+leased"].contains(&count.as_str()));
    assert!(t.metadata.get("queue").is_some_and(|q| !q.is_empty()));
    let target: i64 = t.metadata["target"].parse().expect("target is a number");
    assert!(target >= 1);
    let auth = t.authentication_ref.as_ref().expect("authenticationRef");
    assert!(
        auths.contains(&auth.name),
        "no TriggerAuthentication {}",
        auth.name
    );
    count
}

#[test]
fn the_keda_examples_parse_into_keda_types_and_pick_matching_counts() {
    let docs = documents();
    let auths: Vec<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "TriggerAuthentication")
        .map(|(f, d)| {
            let a: TriggerAuthentication = typed(f, d);
            assert_eq!(a.api_version, "keda.sh/v1alpha1");
            let params: Vec<&str> = a
                .spec
                .secret_target_ref
                .iter()
                .map(|r| r.parameter.as_str())
                .collect();
            assert!(params.contains(&"caCert") && params.contains(&"token"));
            assert!(
                a.spec
                    .secret_target_ref
                    .iter()
                    .all(|r| r.name == "workq-keda")
            );
            a.metadata.name
        })
        .collect();
    assert!(!auths.is_empty(), "no TriggerAuthentication");
    let (mut jobs, mut objects) = (0, 0);
    for (f, d) in &docs {
        match d["kind"].as_str() {
            Some("ScaledJob") => {
                let j: ScaledJob = typed(f, d);
                assert_eq!(
                    (j.api_version.as_str(), j.kind.as_str()),
                    ("keda.sh/v1alpha1", "ScaledJob")
                );
                let strategy = j
                    .spec
                    .scaling_strategy
                    .and_then(|s| s.strategy)
                    .unwrap_or_else(|| "default".into());
                for t in &j.spec.triggers {
                    let count = check_trigger(t, &auths);
                    // accurate expects no in-flight items; default subtracts
                    // every running Job, so it needs them.
                    let want = if strategy == "accurate" {
                        "pending"
                    } else {
                        "pending+leased"
                    };
                    assert_eq!(count, want, "{}: strategy {strategy}", j.metadata.name);
                }
                let command =
                    &j.spec.job_target_ref["template"]["spec"]["containers"][0]["command"];
                assert_eq!(command[0], "wq");
                assert_eq!(command[1], "consume");
                jobs += 1;
            }
            Some("ScaledObject") => {
                let o: ScaledObject = typed(f, d);
                assert_eq!(o.api_version, "keda.sh/v1alpha1");
                for t in &o.spec.triggers {
                    // The HPA sizes the whole Deployment, busy pods included.
                    assert_eq!(check_trigger(t, &auths), "pending+leased");
                }
                let target = docs.iter().any(|(_, d)| {
                    d["kind"] == "Deployment"
                        && d["metadata"]["name"] == o.spec.scale_target_ref.name.as_str()
                        && d["metadata"]["namespace"] == o.metadata.namespace.as_str()
                });
                assert!(target, "no Deployment {}", o.spec.scale_target_ref.name);
                objects += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        (jobs, objects),
        (1, 1),
        "one ScaledJob and one ScaledObject"
    );
}

#[test]
fn a_misspelt_keda_field_is_refused() {
    let doc: Value = serde_saphyr::from_str(
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledJob\nmetadata: {name: x, namespace: jobs}\n\
         spec:\n  jobTargetRef: {}\n  maxReplicaCont: 3\n  triggers: []\n",
    )
    .expect("yaml");
    let err = serde_json::from_value::<ScaledJob>(doc).expect_err("misspelt");
    assert!(err.to_string().contains("maxReplicaCont"), "{err}");
}

#[test]
fn the_built_in_parts_validate_against_the_official_schema() {
    if !workq_testkit::kubernetes_validate() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, (f, d)) in documents().into_iter().enumerate() {
        let doc = match d["kind"].as_str() {
            Some("Deployment" | "Secret") => d,
            // The Job KEDA makes from jobTargetRef.
            Some("ScaledJob") => serde_json::json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"]},
                "spec": d["spec"]["jobTargetRef"],
            }),
            _ => continue,
        };
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, serde_json::to_vec(&doc).expect("json")).expect("write");
        files.push((f, path));
    }
    assert_eq!(
        files.len(),
        3,
        "Deployment, Secret, and the ScaledJob's Job"
    );
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.35", "--strict", "--quiet"])
        .args(files.iter().map(|(_, p)| p))
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "schema validation failed ({:?}):\n{}{}",
        files,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
