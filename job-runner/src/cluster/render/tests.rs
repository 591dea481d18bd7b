use super::*;

fn job(yaml: &str) -> Job {
    serde_saphyr::from_str(yaml).expect("test yaml")
}

fn first(job: &Job) -> Container {
    let spec = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    spec.expect("pod spec").containers[0].clone()
}

#[test]
fn injection_wraps_the_command_per_pattern() {
    let cases = [
        // (command, coarse, want)
        (
            "[python, worker.py]",
            true,
            "/workq/bin/wq consume -c 1 -- python worker.py",
        ),
        (
            "[python, worker.py]",
            false,
            "/workq/bin/wq consume -- python worker.py",
        ),
        (
            "[wq, consume, -c, \"1\", --]",
            true,
            "/workq/bin/wq consume -c 1 --",
        ),
        (
            "[/usr/bin/wq, consume, --]",
            false,
            "/workq/bin/wq consume --",
        ),
    ];
    for (command, coarse, want) in cases {
        let mut j = job(&format!(
            "metadata: {{name: j}}\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: i\n        command: {command}\n        args: [x]\n        env: [{{name: WQ_URL, value: old}}]\n"
        ));
        inject(&mut j, "q", "grpc://svc:1", coarse, "img").expect("inject");
        let c = first(&j);
        assert_eq!(c.command.unwrap_or_default().join(" "), want, "{command}");
        assert_eq!(c.args, Some(vec!["x".to_string()]));
        let env: Vec<(String, String)> = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("WQ_URL".into(), "grpc://svc:1".into()),
                ("WQ_QUEUE".into(), "q".into())
            ]
        );
        let pod = j.spec.and_then(|s| s.template.spec).expect("pod");
        let init = &pod.init_containers.expect("init")[0];
        assert_eq!(init.name, WRAPPER_CONTAINER);
        assert_eq!(init.image.as_deref(), Some("img"));
        assert_eq!(
            pod.volumes.expect("volumes")[0].empty_dir,
            Some(EmptyDirVolumeSource::default())
        );
    }
}

#[test]
fn injection_refuses_what_it_cannot_wrap() {
    let cases = [
        (
            "containers: [{name: c, image: i}]",
            "containers[0].command: Required value",
        ),
        (
            "containers: [{name: c, image: i, command: [a]}]\n      volumes: [{name: workq-bin, emptyDir: {}}]",
            "is taken by the wq wrapper",
        ),
    ];
    for (spec, want) in cases {
        let mut j = job(&format!(
            "metadata: {{name: j}}\nspec:\n  template:\n    spec:\n      {spec}\n"
        ));
        let err = inject(&mut j, "q", "u", false, "img").expect_err(spec);
        assert!(err.to_string().contains(want), "{spec}: {err}");
        assert!(err.to_string().contains("--no-inject"), "{err}");
    }
}
