//! The pod template's `ValidatePodSpec` rules the runner checks, and the
//! runner's own refusals: what `--local` cannot do, in plain words.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::{Ctx, Problem, Rule, supported_field_path};

fn pod<'a>(c: &Ctx<'a>) -> Option<&'a PodSpec> {
    c.spec.template.spec.as_ref()
}

fn containers<'a>(c: &'a Ctx<'a>) -> impl Iterator<Item = (String, &'a Container)> {
    let tp = c.at("template.spec");
    pod(c).into_iter().flat_map(move |p| {
        let tp = tp.clone();
        let init = p.init_containers.iter().flatten().enumerate();
        let main = p.containers.iter().enumerate();
        init.map(|(i, ct)| ("initContainers", i, ct))
            .chain(main.map(|(i, ct)| ("containers", i, ct)))
            .map(move |(g, i, ct)| (format!("{tp}.{g}[{i}]"), ct))
    })
}

/// The pod template's `ValidatePodSpec` rules the runner checks.
pub const POD_SPEC_RULES: &[Rule] = &[
    Rule {
        id: "volumes.names-and-paths",
        source: "ValidatePodSpec (validateVolumes, validateLocalNonReservedPath)",
        check: |c| {
            let tp = c.at("template.spec");
            let mut out = Vec::new();
            for (i, v) in pod(c)
                .iter()
                .flat_map(|p| p.volumes.iter().flatten())
                .enumerate()
            {
                let vp = format!("{tp}.volumes[{i}]");
                if let Err(why) = dns1123_label(&v.name) {
                    out.push(Problem::Invalid(
                        format!("{vp}.name"),
                        Some(format!("{:?}", v.name)),
                        why,
                    ));
                }
                for (j, item) in v
                    .downward_api
                    .iter()
                    .flat_map(|d| d.items.iter().flatten())
                    .enumerate()
                {
                    if let Err(why) = local_path(&item.path) {
                        out.push(Problem::Invalid(
                            format!("{vp}.downwardAPI.items[{j}].path"),
                            Some(format!("{:?}", item.path)),
                            why,
                        ));
                    }
                }
            }
            out
        },
    },
    Rule {
        id: "template.spec.required",
        source: "ValidatePodTemplateSpec",
        check: |c| match pod(c) {
            None => vec![Problem::Required(c.at("template.spec"), String::new())],
            Some(p) if p.containers.is_empty() => vec![Problem::Required(
                c.at("template.spec.containers"),
                String::new(),
            )],
            Some(_) => Vec::new(),
        },
    },
    Rule {
        id: "containers.name.unique",
        source: "ValidatePodSpec (validateContainers)",
        check: |c| {
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for (cp, ct) in containers(c) {
                if seen.contains(&ct.name.as_str()) {
                    out.push(Problem::Duplicate(
                        format!("{cp}.name"),
                        format!("{:?}", ct.name),
                    ));
                }
                seen.push(ct.name.as_str());
            }
            out
        },
    },
    Rule {
        id: "containers.volumeMounts",
        source: "ValidatePodSpec (ValidateVolumeMounts)",
        check: |c| {
            let volumes: Vec<&str> = pod(c)
                .iter()
                .flat_map(|p| p.volumes.iter().flatten())
                .map(|v| v.name.as_str())
                .collect();
            let mut out = Vec::new();
            for (cp, ct) in containers(c) {
                for (j, m) in ct.volume_mounts.iter().flatten().enumerate() {
                    if !volumes.contains(&m.name.as_str()) {
                        out.push(Problem::NotFound(
                            format!("{cp}.volumeMounts[{j}].name"),
                            format!("{:?}", m.name),
                        ));
                    }
                    if !m.mount_path.starts_with('/') {
                        out.push(Problem::Invalid(
                            format!("{cp}.volumeMounts[{j}].mountPath"),
                            Some(format!("{:?}", m.mount_path)),
                            "must be an absolute path".into(),
                        ));
                    }
                }
            }
            out
        },
    },
];

/// What `--local` cannot do, refused in plain words (not the API server's).
pub const LOCAL_RULES: &[Rule] = &[
    Rule {
        id: "local.containers.command",
        source: "local",
        check: |c| {
            containers(c)
                .filter(|(_, ct)| ct.command.as_ref().is_none_or(|v| v.is_empty()))
                .map(|(cp, ct)| Problem::Local(
                    format!("{cp}.command"),
                    format!("Required value: images are not pulled locally, so container {:?} must name the program to run on this machine in `command` (the image's entrypoint is unknown)", ct.name),
                ))
                .collect()
        },
    },
    Rule {
        id: "local.containers.sidecar",
        source: "local",
        check: |c| {
            containers(c)
                .filter(|(_, ct)| ct.restart_policy.is_some())
                .map(|(cp, _)| Problem::Local(
                    format!("{cp}.restartPolicy"),
                    "not supported by --local (sidecar containers); remove it to run this Job locally".into(),
                ))
                .collect()
        },
    },
    Rule {
        id: "local.containers.env",
        source: "local",
        check: |c| {
            let mut out = Vec::new();
            for (cp, ct) in containers(c) {
                for (j, e) in ct.env.iter().flatten().enumerate() {
                    let Some(from) = &e.value_from else { continue };
                    let ep = format!("{cp}.env[{j}].valueFrom");
                    match &from.field_ref {
                        Some(f) if supported_field_path(&f.field_path) => {}
                        Some(f) => out.push(Problem::NotSupported(
                            format!("{ep}.fieldRef.fieldPath"),
                            format!("{:?}", f.field_path),
                            &["metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels['KEY']", "metadata.annotations['KEY']", "spec.nodeName", "spec.serviceAccountName", "status.podIP", "status.hostIP"],
                        )),
                        None => out.push(Problem::Local(
                            ep,
                            format!("env {:?} cannot be resolved locally: only fieldRef is supported by --local (use `value:` instead)", e.name),
                        )),
                    }
                }
                if ct.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
                    out.push(Problem::Local(
                        format!("{cp}.envFrom"),
                        "not supported by --local (ConfigMaps and Secrets are not read); use env with value".into(),
                    ));
                }
            }
            out
        },
    },
    Rule {
        id: "local.volumes",
        source: "local",
        check: |c| {
            let tp = c.at("template.spec");
            let mut out = Vec::new();
            for (i, v) in pod(c)
                .iter()
                .flat_map(|p| p.volumes.iter().flatten())
                .enumerate()
            {
                let vp = format!("{tp}.volumes[{i}]");
                if v.empty_dir.is_none() && v.downward_api.is_none() {
                    out.push(Problem::Local(
                        vp.clone(),
                        format!("volume {:?} cannot be provided locally: only emptyDir and downwardAPI volumes are supported by --local", v.name),
                    ));
                }
                for (j, item) in v
                    .downward_api
                    .iter()
                    .flat_map(|d| d.items.iter().flatten())
                    .enumerate()
                {
                    match &item.field_ref {
                        Some(f) if supported_field_path(&f.field_path) => {}
                        Some(f) => out.push(Problem::NotSupported(
                            format!("{vp}.downwardAPI.items[{j}].fieldRef.fieldPath"),
                            format!("{:?}", f.field_path),
                            &[
                                "metadata.name",
                                "metadata.namespace",
                                "metadata.uid",
                                "metadata.labels['KEY']",
                                "metadata.annotations['KEY']",
                            ],
                        )),
                        None => out.push(Problem::Local(
                            format!("{vp}.downwardAPI.items[{j}]"),
                            "only fieldRef items are supported by --local".into(),
                        )),
                    }
                }
            }
            out
        },
    },
];

/// Kubernetes' `IsDNS1123Label`: at most 63 characters, lowercase
/// alphanumerics and '-', starting and ending alphanumeric.
pub(crate) fn dns1123_label(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, z)| a != b'-' && z != b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars || !ends_ok {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63 characters)".into());
    }
    Ok(())
}

/// Kubernetes' `validateLocalNonReservedPath`: a relative path with no
/// `..` element that does not start with `..`.
pub(crate) fn local_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    if path.split(['/', '\\']).any(|seg| seg == "..") {
        return Err("must not contain '..'".into());
    }
    if path.starts_with("..") {
        return Err("must not start with '..'".into());
    }
    Ok(())
}
