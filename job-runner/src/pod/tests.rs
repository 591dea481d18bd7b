use super::*;

fn job(yaml: &str) -> Job {
    serde_saphyr::from_str(yaml).expect("test yaml")
}

const INDEXED: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: ij\nspec:\n  completions: 3\n  completionMode: Indexed\n  template:\n    metadata:\n      labels: {app: x}\n    spec:\n      restartPolicy: Never\n      subdomain: svc\n      containers:\n      - name: w\n        image: busybox\n        command: [echo, \"$(GREETING) $(NOPE) $$(X)\"]\n        env:\n        - {name: GREETING, value: \"hi $(JOB_COMPLETION_INDEX)\"}\n        - name: IDX\n          valueFrom:\n            fieldRef: {fieldPath: \"metadata.annotations['batch.kubernetes.io/job-completion-index']\"}\n        - name: POD\n          valueFrom:\n            fieldRef: {fieldPath: metadata.name}\n      volumes:\n      - name: in\n        downwardAPI:\n          items:\n          - path: data.txt\n            fieldRef: {fieldPath: \"metadata.labels['app']\"}\n";

#[test]
fn indexed_pod_names_env_and_volumes() {
    let p = PodPlan::new(
        &job(INDEXED),
        "uid-1",
        Some(2),
        &[("WQ_QUEUE".into(), "q".into())],
        &[],
    );
    assert!(
        p.name.starts_with("ij-2-") && p.name.len() == "ij-2-".len() + 5,
        "{}",
        p.name
    );
    assert_eq!(p.hostname, "ij-2");
    assert_eq!(p.labels.get("job-name").map(String::as_str), Some("ij"));
    assert_eq!(
        p.annotations
            .get(keys::COMPLETION_INDEX)
            .map(String::as_str),
        Some("2")
    );
    let c = &p.containers[0];
    let env: BTreeMap<_, _> = c.env.iter().cloned().collect();
    assert_eq!(
        env.get("JOB_COMPLETION_INDEX").map(String::as_str),
        Some("2")
    );
    assert_eq!(env.get("IDX").map(String::as_str), Some("2"));
    assert_eq!(env.get("POD"), Some(&p.name));
    assert_eq!(env.get("WQ_QUEUE").map(String::as_str), Some("q"));
    assert_eq!(c.argv, ["echo", "hi 2 $(NOPE) $(X)"]);
    assert_eq!(
        p.volumes[0].kind,
        VolumeKind::DownwardApi(vec![("data.txt".into(), "x".into())])
    );
    assert!(p.needs_sandbox());
}

#[test]
fn non_indexed_names() {
    let yaml = INDEXED
        .replace("  completionMode: Indexed\n", "")
        .replace("      subdomain: svc\n", "");
    let p = PodPlan::new(&job(&yaml), "u", None, &[], &[]);
    assert!(p.name.starts_with("ij-") && p.name.len() == 8, "{}", p.name);
    assert_eq!(p.hostname, p.name);
    assert!(p.name[3..].bytes().all(|b| ALPHABET.contains(&b)));
    assert!(!p.needs_sandbox());
}
