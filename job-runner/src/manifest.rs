//! Reading manifests as `kubectl create -f` does: files, directories of files
//! and standard input (`-`), each holding one or more YAML documents.
//!
//! Every document is parsed into the real Kubernetes type
//! ([`k8s_openapi`]) and checked strictly, as `kubectl`'s server-side strict
//! validation does: an unknown or misspelt field is an error naming its path
//! (`spec.template.spec.containers[0].comand: unknown field "comand"`), and so
//! is a missing required field or a value of the wrong type. Then each Job is
//! checked as the API server would before accepting it (see
//! [`crate::validate`]).
//!
//! Objects that cannot run locally (anything but a `batch/v1` Job or CronJob,
//! or a `v1` Service, used for pod-to-pod hostnames) are returned in
//! [`Loaded::skipped`] so the caller names them.

use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::template::{self, TemplateOptions};

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file name as given (or `<stdin>`).
    pub file: String,
    /// The directory relative paths in the object are resolved against
    /// (`workq.dev/items-file`).
    pub dir: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)
    }
}

/// One object that the job-runner can act on.
#[derive(Debug, Clone)]
pub enum Object {
    /// A `batch/v1` Job.
    Job(Box<Job>),
    /// A `batch/v1` CronJob.
    CronJob(Box<CronJob>),
    /// A `v1` Service (headless Services give pods resolvable hostnames).
    Service(Box<Service>),
}

/// One parsed document and where it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from.
    pub origin: Origin,
    /// What it is.
    pub object: Object,
}

/// The result of [`load`].
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every object that can run, in input order.
    pub manifests: Vec<Manifest>,
    /// Objects that cannot run locally, one line each naming the object and why.
    pub skipped: Vec<String>,
}

/// Reads every `-f` argument (file, directory, or `-` for `stdin`).
///
/// Directories are read like `kubectl create -f DIR`: their files ending in
/// `.yaml`, `.yml`, `.json` (and Jinja templates), in name order, not
/// recursively.
pub fn load(paths: &[String], opts: &TemplateOptions, stdin: &mut dyn Read) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for p in paths {
        if p == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| Error::Read {
                    path: PathBuf::from("<stdin>"),
                    source,
                })?;
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            parse_text("<stdin>", &cwd, &text, opts, &mut loaded)?;
            continue;
        }
        let path = Path::new(p);
        let meta = std::fs::metadata(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| Error::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    let name = f.to_string_lossy();
                    f.is_file()
                        && ([".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x))
                            || template::is_jinja(&name))
                })
                .collect();
            files.sort();
            for f in files {
                read_file(&f, opts, &mut loaded)?;
            }
        } else {
            read_file(path, opts, &mut loaded)?;
        }
    }
    Ok(loaded)
}

fn read_file(path: &Path, opts: &TemplateOptions, loaded: &mut Loaded) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parse_text(&path.display().to_string(), &dir, &text, opts, loaded)
}

/// Parses one text (after template expansion) into `loaded`.
pub fn parse_text(
    file: &str,
    dir: &Path,
    text: &str,
    opts: &TemplateOptions,
    loaded: &mut Loaded,
) -> Result<()> {
    let text = template::expand(file, text, opts)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| Error::Yaml {
        source_name: file.to_string(),
        message: e.to_string(),
    })?;
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let origin = Origin {
            file: file.to_string(),
            dir: dir.to_path_buf(),
            document: i + 1,
        };
        match parse_object(&origin, doc)? {
            Parsed::Object(object) => loaded.manifests.push(Manifest { origin, object }),
            Parsed::Skipped(why) => loaded.skipped.push(why),
        }
    }
    Ok(())
}

enum Parsed {
    Object(Object),
    Skipped(String),
}

fn parse_object(origin: &Origin, doc: Value) -> Result<Parsed> {
    let invalid = |problems: Vec<String>| Error::Invalid {
        origin: origin.to_string(),
        problems,
    };
    let Value::Object(map) = &doc else {
        return Err(invalid(vec![
            "a manifest must be a mapping with apiVersion, kind and metadata".into(),
        ]));
    };
    let field = |name: &str| {
        map.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let mut missing = Vec::new();
    if api_version.is_empty() {
        missing.push("apiVersion: Required value: every manifest names its API group and version (apiVersion: batch/v1)".to_string());
    }
    if kind.is_empty() {
        missing.push("kind: Required value: every manifest names its kind (kind: Job)".to_string());
    }
    if !missing.is_empty() {
        return Err(invalid(missing));
    }
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>")
        .to_string();
    let named = |problems: Vec<String>| Error::Invalid {
        origin: format!("{origin}, {kind}/{name}"),
        problems,
    };
    let object = match (api_version.as_str(), kind.as_str()) {
        ("batch/v1", "Job") => {
            let job: Job = typed(&doc).map_err(&named)?;
            let problems = crate::validate::job(&job);
            if !problems.is_empty() {
                return Err(named(problems));
            }
            if let Some(other) = external_manager(job.spec.as_ref()) {
                return Ok(Parsed::Skipped(format!(
                    "{origin}: Job/{name}: Skip syncing the job as it is managed by an external controller (spec.managedBy: {other:?}); the Job controller leaves it to that controller, and so does --local"
                )));
            }
            Object::Job(Box::new(job))
        }
        ("batch/v1", "CronJob") => {
            let cron: CronJob = typed(&doc).map_err(&named)?;
            let problems = crate::validate::cron_job(&cron);
            if !problems.is_empty() {
                return Err(named(problems));
            }
            let template = cron
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref());
            if let Some(other) = external_manager(template) {
                return Ok(Parsed::Skipped(format!(
                    "{origin}: CronJob/{name}: its Jobs are managed by an external controller (spec.jobTemplate.spec.managedBy: {other:?}); the Job controller would skip every Job it creates, so --local does not schedule it"
                )));
            }
            Object::CronJob(Box::new(cron))
        }
        ("v1", "Service") => Object::Service(Box::new(typed(&doc).map_err(&named)?)),
        (_, "Job" | "CronJob") => {
            return Err(named(vec![format!(
                "apiVersion: Unsupported value: {api_version:?}: supported values: \"batch/v1\""
            )]));
        }
        _ => {
            return Ok(Parsed::Skipped(format!(
                "{origin}: {kind}/{name} ({api_version}) cannot run locally; only batch/v1 Job and CronJob run (and v1 Service names pods); it is ignored"
            )));
        }
    };
    Ok(Parsed::Object(object))
}

/// Deserializes `doc` into `T`, then lists every field of `doc` that `T` does
/// not know. Problems are returned one per line, each starting with its path.
fn typed<T>(doc: &Value) -> std::result::Result<T, Vec<String>>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let value: T = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        vec![describe_serde_error(&path, &inner)]
    })?;
    let back = serde_json::to_value(&value).map_err(|e| vec![e.to_string()])?;
    let mut unknown = Vec::new();
    unknown_fields(doc, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(value)
    } else {
        if unknown.iter().any(|u| u.contains(": unknown field")) {
            unknown.push(
                "fix the spelling of the unknown fields above (`kubectl explain job.spec --recursive` lists the valid ones)"
                    .into(),
            );
        }
        Err(unknown)
    }
}

fn describe_serde_error(path: &str, inner: &str) -> String {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = inner.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return format!("{full}: Required value: missing required field \"{field}\"");
    }
    if path.is_empty() {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    }
}

/// Walks `input` next to its typed round trip `known`: a key of `input` with a
/// non-null value that is absent from `known` is a field the type ignored; a
/// key only in `known` is a required field that `input` lacks.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(kv) => unknown_fields(value, kv, &child, out),
                    None if value.is_null() => {}
                    None => out.push(format!("{child}: unknown field \"{key}\"")),
                }
            }
            // The Kubernetes types fill a missing required field with its
            // default, and always write it back: a key only in the round trip
            // is a required field the input lacks.
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.push(format!(
                    "{child}: Required value: missing required field \"{key}\""
                ));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The controller named by `spec.managedBy` when it is not the built-in Job
/// controller (which then skips the Job, as `--local` does).
fn external_manager(spec: Option<&k8s_openapi::api::batch::v1::JobSpec>) -> Option<&str> {
    spec.and_then(|s| s.managed_by.as_deref())
        .filter(|m| *m != crate::validate::JOB_CONTROLLER)
}

#[cfg(test)]
mod tests;
