//! The job-runner's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the job-runner library.
///
/// Variants whose [`Error::is_bad_input`] is true mean the manifests, templates
/// or flags the user gave cannot be used; the binary exits with code 2 for them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest, template or items file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path as the user gave it.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml {
        /// Where the text came from (file name or `<stdin>`).
        source_name: String,
        /// The parser's message, with its line and column.
        message: String,
    },
    /// One or more fields of a manifest are wrong: unknown, missing, of the
    /// wrong type, or with a value the Job controller would refuse.
    #[error("{origin}: {}", .problems.join("\n  "))]
    Invalid {
        /// Which document (`file (document N, Job/name)`).
        origin: String,
        /// One line per problem, each starting with the field's path.
        problems: Vec<String>,
    },
    /// A template could not be expanded.
    #[error("{source_name}: {message}")]
    Template {
        /// The template's file name.
        source_name: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The input held nothing that can run.
    #[error(
        "no Job or CronJob found in {0}; give at least one manifest with `kind: Job` or `kind: CronJob`"
    )]
    NothingToRun(String),
    /// A pod cannot be run on this machine as the manifest asks.
    #[error("{0}")]
    Unsupported(String),
    /// Starting or watching a local process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// No cluster can be reached, or the cluster does not answer as expected.
    #[error("{0}")]
    Cluster(String),
    /// A Kubernetes API request failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done (and, where known, how to fix it).
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The in-process queue service, or talking to a queue, failed.
    #[error("work queue: {0}")]
    Queue(String),
}

impl Error {
    /// True when the error is about the user's input (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Read { .. }
                | Error::Yaml { .. }
                | Error::Invalid { .. }
                | Error::Template { .. }
                | Error::NothingToRun(_)
                | Error::Unsupported(_)
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
