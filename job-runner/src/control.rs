//! `job-runner evict POD`: evicting one pod of a running `job-runner run`,
//! as `kubectl drain` or the Eviction API would.
//!
//! Each run listens on a Unix socket, `job-runner-<uid>/<pid>.sock` in
//! `$XDG_RUNTIME_DIR` (or the temporary directory), for lines
//! `evict <pod>`, and answers `evicted <pod>` or `unknown <pod>`.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// The directory of the runs' sockets.
pub fn socket_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("job-runner-{}", nix::unistd::getuid()))
}

/// A request from `job-runner evict`: the pod's name and where to answer
/// whether this run had it.
pub type EvictRequest = (String, oneshot::Sender<bool>);

/// A run's listening socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts listening; each eviction request goes to `tx`.
pub fn listen(tx: mpsc::UnboundedSender<EvictRequest>) -> Result<ControlSocket> {
    let dir = socket_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Some(pod) = line.strip_prefix("evict ") else {
                        continue;
                    };
                    let (reply, answer) = oneshot::channel();
                    if tx.send((pod.to_string(), reply)).is_err() {
                        return;
                    }
                    let word = if answer.await.unwrap_or(false) {
                        "evicted"
                    } else {
                        "unknown"
                    };
                    if write
                        .write_all(format!("{word} {pod}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(ControlSocket { path, task })
}

/// Asks every running `job-runner run` of this user to evict `pod`; true when
/// one had it.
pub async fn evict(pod: &str) -> Result<bool> {
    let dir = socket_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(false);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        let Ok(stream) = UnixStream::connect(&path).await else {
            // A run that ended without removing its socket.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("evict {pod}\n").as_bytes())
            .await
            .map_err(|e| Error::io(format!("talking to {}", path.display()), e))?;
        let mut lines = BufReader::new(read).lines();
        if let Ok(Some(answer)) = lines.next_line().await
            && answer.starts_with("evicted ")
        {
            return Ok(true);
        }
    }
    Ok(false)
}
