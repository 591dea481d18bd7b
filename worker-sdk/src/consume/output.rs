//! The programs' output, forwarded line by line: with several programs at
//! once, a line is written whole, never cut by another program's (GNU
//! parallel's `--line-buffer`), optionally after the item's id and a tab
//! (`--tag`).

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::types::ItemId;

/// Lines waiting for the writer before readers wait.
const BACKLOG: usize = 1024;

/// Where programs' lines go: one writer per stream, so whole lines.
#[derive(Clone)]
pub(super) struct Lines {
    out: mpsc::Sender<Vec<u8>>,
    err: mpsc::Sender<Vec<u8>>,
    tag: bool,
}

/// The writers behind [`Lines`]; [`Writers::finish`] waits until every line
/// is written.
pub(super) struct Writers(Vec<JoinHandle<()>>);

/// Starts the writers of standard output and error.
pub(super) fn start(tag: bool) -> (Lines, Writers) {
    let (out, out_rx) = mpsc::channel(BACKLOG);
    let (err, err_rx) = mpsc::channel(BACKLOG);
    let writers = vec![
        tokio::spawn(write_lines(out_rx, tokio::io::stdout())),
        tokio::spawn(write_lines(err_rx, tokio::io::stderr())),
    ];
    (Lines { out, err, tag }, Writers(writers))
}

impl Writers {
    /// Waits for every line sent to be written (once every [`Lines`] is gone).
    pub(super) async fn finish(self) {
        for w in self.0 {
            let _ = w.await;
        }
    }
}

impl Lines {
    /// Forwards `stdout` and `stderr` of item `id`'s program; the handle ends
    /// once both are closed and their last lines sent.
    pub(super) fn forward(
        &self,
        id: &ItemId,
        stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
        stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    ) -> JoinHandle<()> {
        let prefix = self.tag.then(|| format!("{id}\t").into_bytes());
        let out = stdout.map(|r| tokio::spawn(pump(r, self.out.clone(), prefix.clone())));
        let err = stderr.map(|r| tokio::spawn(pump(r, self.err.clone(), prefix)));
        tokio::spawn(async move {
            for p in [out, err].into_iter().flatten() {
                let _ = p.await;
            }
        })
    }
}

/// Reads `r` line by line, each sent whole after `prefix`; a last line
/// without its newline gets one.
async fn pump(r: impl AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>, prefix: Option<Vec<u8>>) {
    let mut r = BufReader::new(r);
    loop {
        let mut line = prefix.clone().unwrap_or_default();
        let start = line.len();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > start && !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// Writes the lines that come, as few writes as the backlog allows.
async fn write_lines(mut rx: mpsc::Receiver<Vec<u8>>, mut w: impl AsyncWrite + Unpin) {
    let mut buf = Vec::new();
    while let Some(line) = rx.recv().await {
        buf.extend_from_slice(&line);
        while buf.len() < 64 * 1024
            && let Ok(more) = rx.try_recv()
        {
            buf.extend_from_slice(&more);
        }
        if w.write_all(&buf).await.is_err() {
            // The reader went away (a closed pipe): drop the rest quietly.
            while rx.recv().await.is_some() {}
            return;
        }
        let _ = w.flush().await;
        buf.clear();
    }
}
