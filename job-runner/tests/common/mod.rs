//! Shared helpers: run the real `job-runner` binary and read what it did.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository's root (for `deploy/examples`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("job-runner lives in the workspace")
        .to_path_buf()
}

/// An example manifest's path.
pub fn example(name: &str) -> String {
    repo()
        .join("deploy/examples")
        .join(name)
        .display()
        .to_string()
}

/// A `job-runner` command, run from the repository root.
pub fn job_runner() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_job-runner"));
    cmd.current_dir(repo()).stdin(Stdio::null());
    cmd
}

/// What a finished run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON document on stdout (for `-o json` runs).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Every Job in the JSON document.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        let doc = self.json();
        if doc["kind"] == "List" {
            doc["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![doc]
        }
    }

    /// Lines a pod printed (`[pod] text`), text only, from either stream.
    pub fn pod_lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .filter(|l| l.starts_with('['))
            .filter_map(|l| l.split_once("] ").map(|(_, t)| t.to_string()))
            .collect()
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `job-runner ARGS...` to its end.
pub fn run(args: &[&str]) -> Run {
    job_runner()
        .args(args)
        .output()
        .expect("job-runner starts")
        .into()
}

/// Runs `job-runner ARGS...` with `input` on standard input.
pub fn run_with_stdin(args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let mut child = job_runner()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("job-runner starts");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("job-runner ends").into()
}

/// Writes `text` to a file in `dir` and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

/// A Job with one container running `sh -c SCRIPT`, and `spec` lines added
/// to its spec (indented by two spaces).
pub fn job(name: &str, spec: &str, restart: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: {restart}\n      containers:\n      - name: main\n        image: busybox\n        command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

/// The `Failed`/`Complete` condition of a Job object: (type, reason, message).
pub fn outcome(job: &serde_json::Value) -> (String, String, String) {
    let conds = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds
        .iter()
        .rev()
        .find(|c| c["type"] == "Complete" || c["type"] == "Failed")
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}
