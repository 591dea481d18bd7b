//! A container's process group: SIGTERM past a `bwrap` monitor, orphans
//! adopted and reaped, and whether a program is there to start.

use std::path::Path;
use std::time::Duration;

use crate::pod::ContainerPlan;

/// Sends SIGTERM to every process of group `pgid` except its leader (the
/// `bwrap` monitor of a sandboxed container).
pub(super) fn term_group_but_leader(pgid: nix::unistd::Pid) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == pgid.as_raw() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces.
        let group = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<i32>().ok());
        if group == Some(pgid.as_raw()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Makes this process the reaper of its pods' orphans (the processes `bwrap`
/// leaves when it is killed), so that [`super::run_pod`] can wait for them instead
/// of leaving them to `init`.
pub fn adopt_orphans() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Waits (briefly) for the killed processes of a container's group that
/// were reparented to this process, so that none is left when the pod ends.
pub(super) async fn reap_group(pgid: nix::unistd::Pid) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let group = nix::unistd::Pid::from_raw(-pgid.as_raw());
    for _ in 0..200 {
        match waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Whether a container's program is on this host: a path, or a name found
/// on the container's `PATH`.
pub(super) fn program_exists(c: &ContainerPlan) -> bool {
    let Some(program) = c.argv.first() else {
        return false;
    };
    if program.contains('/') {
        let base = c.working_dir.as_deref().map(Path::new);
        return base
            .map_or_else(|| Path::new(program).to_path_buf(), |b| b.join(program))
            .is_file();
    }
    let path = c
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}
