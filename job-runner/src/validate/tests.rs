use super::*;

fn job_from(yaml: &str) -> Job {
    serde_saphyr::from_str(yaml).expect("test yaml parses")
}

fn base(extra_spec: &str, restart: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n{extra_spec}  template:\n    spec:\n      restartPolicy: {restart}\n      containers:\n      - name: main\n        command: [\"true\"]\n"
    )
}

#[test]
fn a_plain_job_is_valid() {
    assert_eq!(job(&job_from(&base("", "Never"))), Vec::<String>::new());
}

#[test]
fn table_of_refusals() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "Always", "restartPolicy: Unsupported value: \"Always\""),
        (
            "  completionMode: Indexed\n",
            "Never",
            "spec.completions: Required value",
        ),
        (
            "  backoffLimitPerIndex: 1\n",
            "Never",
            "requires indexed completion mode",
        ),
        (
            "  completions: 2\n  completionMode: Indexed\n  maxFailedIndexes: 1\n",
            "Never",
            "backoffLimitPerIndex must also be specified",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {operator: In, values: [42]}\n",
            "OnFailure",
            "only \"Never\" is supported when podFailurePolicy",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {operator: In, values: [0]}\n",
            "Never",
            "must not be 0",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: FailIndex\n      onExitCodes: {operator: In, values: [1]}\n",
            "Never",
            "requires the backoffLimitPerIndex",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: Explode\n      onExitCodes: {operator: In, values: [1]}\n",
            "Never",
            "Unsupported value: \"Explode\"",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {containerName: nope, operator: In, values: [1]}\n",
            "Never",
            "containerName: Invalid value: \"nope\"",
        ),
        (
            "  podFailurePolicy:\n    rules:\n    - action: Ignore\n",
            "Never",
            "specify one of onExitCodes and onPodConditions",
        ),
        (
            "  activeDeadlineSeconds: 0\n",
            "Never",
            "must be greater than 0",
        ),
        (
            "  parallelism: -1\n",
            "Never",
            "spec.parallelism: Invalid value: -1",
        ),
    ];
    for (spec, restart, want) in cases {
        let problems = job(&job_from(&base(spec, restart)));
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "spec {spec:?} restart {restart}: want {want:?} in {problems:?}"
        );
    }
}

#[test]
fn names_and_commands() {
    let yaml = base("", "Never")
        .replace("name: j", "name: Bad_Name")
        .replace("command: [\"true\"]", "image: x");
    let problems = job(&job_from(&yaml));
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("metadata.name: Invalid value: \"Bad_Name\"")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("containers[0].command: Required value")),
        "{problems:?}"
    );
}

#[test]
fn unsupported_volumes_and_env() {
    let yaml = base("", "Never").replace(
        "        command: [\"true\"]\n",
        "        command: [\"true\"]\n        env:\n        - name: S\n          valueFrom:\n            secretKeyRef: {name: s, key: k}\n        volumeMounts:\n        - {name: data, mountPath: /data}\n      volumes:\n      - name: data\n        hostPath: {path: /srv}\n",
    );
    let problems = job(&job_from(&yaml));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("volumes[0]: volume \"data\" cannot be provided locally")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("env[0].valueFrom: env \"S\" cannot be resolved locally")),
        "{problems:?}"
    );
}
