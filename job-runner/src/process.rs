//! Pods as local processes.
//!
//! A pod runs its init containers one after another (each must exit 0), then
//! its containers together; the pod succeeds when every container exited 0.
//! Each container is a process group of its own, so a terminal's Ctrl-C
//! reaches the runner only, and the runner decides what the pods get:
//! SIGTERM, then SIGKILL after the pod's `terminationGracePeriodSeconds`.
//!
//! Pods with volume mounts or a `subdomain` run inside `bwrap` (bubblewrap):
//! an unprivileged mount and UTS namespace in which each volume is a
//! directory of the pod's, bound at its `mountPath`, `/etc/hosts` names the
//! Job's pods, and the hostname is the pod's. Other pods run there too when
//! `bwrap` works ([`PodContext::own_hostname`]), for the hostname alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};

use crate::controller::{ContainerExit, PodResult};
pub use group::adopt_orphans;
use group::{program_exists, reap_group, term_group_but_leader};

mod group;
use crate::error::{Error, Result};
use crate::pod::{ContainerPlan, PodPlan, VolumeKind};

/// Why a pod is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Evicted (Ctrl-C once, `DisruptionTarget`): SIGTERM, grace, SIGKILL.
    Evict,
    /// Deleted by the controller (the Job ended): SIGTERM, grace, SIGKILL.
    Delete,
    /// Stopped at once (Ctrl-C twice): SIGKILL.
    Kill,
}

/// Where a pod's output lines go.
pub trait Sink: Send + Sync {
    /// One line of a container's output, with the prefix naming pod (and
    /// container).
    fn line(&self, prefix: &str, text: &str);
}

/// Asks the controller whether an `OnFailure` container may restart.
pub type Restarter = Arc<dyn Fn() -> oneshot::Receiver<bool> + Send + Sync>;

/// What a pod needs from its surroundings.
#[derive(Clone)]
pub struct PodContext {
    /// A directory of the pod's own (volumes live here).
    pub dir: PathBuf,
    /// The `bwrap` program, when the pod needs a sandbox.
    pub bwrap: Option<PathBuf>,
    /// Run even a pod without volumes or subdomain in a UTS namespace of its
    /// own, so that `hostname` says the pod's name as in Kubernetes (needs a
    /// working `bwrap`).
    pub own_hostname: bool,
    /// A hosts file to show as `/etc/hosts` in the sandbox.
    pub hosts: Option<PathBuf>,
    /// Output lines.
    pub sink: Arc<dyn Sink>,
    /// Base of the container restart back-off (`OnFailure`).
    pub restart_backoff: Duration,
    /// Asks whether a failed container may restart.
    pub restarter: Restarter,
    /// Told once every container of the pod has started (the pod is ready:
    /// pods here have no readiness probes).
    pub on_ready: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Finds `bwrap` on `PATH`.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
}

/// The error for a pod that needs a sandbox where there is no `bwrap`.
pub fn no_bwrap_error(plan: &PodPlan) -> Error {
    let mounts: Vec<String> = plan
        .all_containers()
        .flat_map(|c| c.mounts.iter().map(|m| m.1.clone()))
        .collect();
    let why = if mounts.is_empty() {
        format!(
            "a hostname other pods resolve (subdomain {:?})",
            plan.subdomain.clone().unwrap_or_default()
        )
    } else {
        format!("volumes mounted at {}", mounts.join(", "))
    };
    Error::Unsupported(format!(
        "Job {:?} needs {why}, which --local provides with an unprivileged mount namespace from bubblewrap, and `bwrap` is not on PATH; install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)",
        plan.job
    ))
}

/// Checks once that `bwrap` can make the namespaces pods need here, so that a
/// host which forbids them gets one clear error instead of failing pods.
pub fn check_bwrap(bwrap: &Path) -> Result<()> {
    static CHECKED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    let outcome = CHECKED.get_or_init(|| {
        let out = std::process::Command::new(bwrap)
            .args([
                "--dev-bind",
                "/",
                "/",
                "--unshare-uts",
                "--hostname",
                "probe",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    });
    outcome.clone().map_err(|why| {
        Error::Unsupported(format!(
            "{} cannot create the mount and UTS namespaces pods with volumes or hostnames need: {why}; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu 24.04 an AppArmor profile for bwrap), or run as root",
            bwrap.display()
        ))
    })
}

/// Creates the pod's volume directories and downward-API files.
pub fn prepare_volumes(plan: &PodPlan, dir: &Path) -> Result<()> {
    for v in &plan.volumes {
        let vdir = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&vdir).map_err(|e| {
            Error::io(
                format!("creating volume {} of pod {}", v.name, plan.name),
                e,
            )
        })?;
        if let VolumeKind::DownwardApi(files) = &v.kind {
            for (rel, content) in files {
                let file = vdir.join(rel);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                }
                std::fs::write(&file, content)
                    .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
            }
        }
    }
    Ok(())
}

/// The pod status message of a pod past its own `activeDeadlineSeconds`
/// (reason `DeadlineExceeded`), as the kubelet writes it.
pub const POD_DEADLINE_MESSAGE: &str =
    "Pod was active on the node longer than the specified deadline";

/// Runs a pod to its end (or until stopped) and reports how it ended. Past
/// the pod's own `activeDeadlineSeconds` its containers are stopped as the
/// kubelet does (SIGTERM, grace, SIGKILL) and the pod fails with reason
/// `DeadlineExceeded`.
pub async fn run_pod(
    plan: Arc<PodPlan>,
    ctx: PodContext,
    stop: watch::Receiver<Option<Stop>>,
) -> PodResult {
    let Some(deadline) = plan.active_deadline else {
        return run_containers(plan, ctx, stop).await;
    };
    let (inner_tx, inner_rx) = watch::channel(None);
    let (expired_tx, expired_rx) = oneshot::channel::<()>();
    let mut outer = stop.clone();
    let forward = tokio::spawn(async move {
        let timer = tokio::time::sleep(deadline);
        tokio::pin!(timer);
        let mut expired_tx = Some(expired_tx);
        loop {
            tokio::select! {
                changed = outer.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let v = *outer.borrow();
                    // Past the deadline only a kill still changes anything.
                    if expired_tx.is_some() || v == Some(Stop::Kill) {
                        inner_tx.send_replace(v);
                    }
                }
                _ = &mut timer, if expired_tx.is_some() => {
                    if inner_tx.borrow().is_none()
                        && let Some(tx) = expired_tx.take()
                    {
                        let _ = tx.send(());
                        inner_tx.send_replace(Some(Stop::Delete));
                    }
                }
            }
        }
    });
    let mut result = run_containers(plan, ctx, inner_rx).await;
    forward.abort();
    let mut expired_rx = expired_rx;
    if expired_rx.try_recv().is_ok() {
        result.succeeded = false;
        result.reason = Some(("DeadlineExceeded".into(), POD_DEADLINE_MESSAGE.into()));
    }
    if *stop.borrow() == Some(Stop::Evict) && result.conditions.is_empty() {
        result
            .conditions
            .push(("DisruptionTarget".to_string(), "True".to_string()));
    }
    result
}

async fn run_containers(
    plan: Arc<PodPlan>,
    ctx: PodContext,
    stop: watch::Receiver<Option<Stop>>,
) -> PodResult {
    let mut exits = Vec::new();
    let single = plan.init_containers.len() + plan.containers.len() == 1;
    let mut failed = false;
    for c in &plan.init_containers {
        let code = run_with_restarts(&plan, c, &ctx, stop.clone(), single).await;
        exits.push(ContainerExit {
            name: c.name.clone(),
            exit_code: code,
            init: true,
        });
        if code != 0 {
            failed = true;
            break;
        }
    }
    if !failed && stop.borrow().is_none() {
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in plan.containers.iter().enumerate() {
            let (plan, c, ctx, stop) = (plan.clone(), c.clone(), ctx.clone(), stop.clone());
            set.spawn(async move { (i, run_with_restarts(&plan, &c, &ctx, stop, single).await) });
        }
        if let Some(ready) = &ctx.on_ready {
            ready();
        }
        let mut codes = vec![0; plan.containers.len()];
        while let Some(done) = set.join_next().await {
            match done {
                Ok((i, code)) => codes[i] = code,
                Err(_) => failed = true,
            }
        }
        for (c, code) in plan.containers.iter().zip(codes) {
            failed |= code != 0;
            exits.push(ContainerExit {
                name: c.name.clone(),
                exit_code: code,
                init: false,
            });
        }
    } else {
        failed = true;
    }
    let mut conditions = Vec::new();
    if *stop.borrow() == Some(Stop::Evict) {
        conditions.push(("DisruptionTarget".to_string(), "True".to_string()));
    }
    PodResult {
        pod: plan.name.clone(),
        index: plan.index,
        succeeded: !failed,
        containers: exits,
        conditions,
        reason: None,
    }
}

async fn run_with_restarts(
    plan: &PodPlan,
    c: &ContainerPlan,
    ctx: &PodContext,
    mut stop: watch::Receiver<Option<Stop>>,
    single: bool,
) -> i32 {
    let prefix = if single {
        plan.name.clone()
    } else {
        format!("{}/{}", plan.name, c.name)
    };
    let mut restarts: u32 = 0;
    loop {
        let code = run_container(plan, c, ctx, stop.clone(), &prefix).await;
        if code == 0 || !plan.restart_on_failure || stop.borrow().is_some() {
            return code;
        }
        let allowed = (ctx.restarter)().await.unwrap_or(false);
        if !allowed {
            return code;
        }
        restarts += 1;
        let delay = crate::controller::JobState::backoff_delay(ctx.restart_backoff, restarts)
            .min(Duration::from_secs(300));
        ctx.sink.line(
            &prefix,
            &format!(
                "(container {} exited with {code}; restarting in {}, restartPolicy OnFailure)",
                c.name,
                humantime::format_duration(delay)
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| s.is_some()) => return code,
        }
    }
}

/// Whether the pod's containers run inside `bwrap`.
fn sandboxed(plan: &PodPlan, ctx: &PodContext) -> bool {
    ctx.bwrap.is_some() && (plan.needs_sandbox() || ctx.own_hostname)
}

fn command_for(plan: &PodPlan, c: &ContainerPlan, ctx: &PodContext) -> tokio::process::Command {
    let program = c.argv.first().cloned().unwrap_or_default();
    let mut cmd = match &ctx.bwrap {
        Some(bwrap) if sandboxed(plan, ctx) => {
            let mut cmd = tokio::process::Command::new(bwrap);
            cmd.args(sandbox_args(plan, c, ctx));
            cmd.arg("--").args(&c.argv);
            cmd
        }
        _ => {
            let mut cmd = tokio::process::Command::new(&program);
            cmd.args(c.argv.iter().skip(1));
            if let Some(wd) = &c.working_dir {
                cmd.current_dir(wd);
            }
            cmd
        }
    };
    cmd.env_clear()
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// The `bwrap` arguments giving a container its view: the host's top-level
/// directories bound one by one (so a new mount point is made in the
/// sandbox's own root, not on the host), the pod's volumes at their mount
/// paths, the Job's hosts file, and the pod's hostname.
pub fn sandbox_args(plan: &PodPlan, c: &ContainerPlan, ctx: &PodContext) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/") {
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().to_string();
            if matches!(name.as_str(), "proc" | "dev") {
                continue;
            }
            let path = format!("/{name}");
            match std::fs::read_link(&path) {
                Ok(target) => args.extend(["--symlink".into(), target.display().to_string(), path]),
                Err(_) => args.extend(["--bind".into(), path.clone(), path]),
            }
        }
    }
    args.extend([
        "--dev-bind".into(),
        "/dev".into(),
        "/dev".into(),
        "--proc".into(),
        "/proc".into(),
    ]);
    for (volume, mount, read_only) in &c.mounts {
        let dir = ctx.dir.join("volumes").join(volume);
        let flag = if *read_only { "--ro-bind" } else { "--bind" };
        args.extend([flag.into(), dir.display().to_string(), mount.clone()]);
    }
    if let Some(hosts) = &ctx.hosts {
        args.extend([
            "--ro-bind".into(),
            hosts.display().to_string(),
            "/etc/hosts".into(),
        ]);
    }
    args.extend([
        "--unshare-uts".into(),
        "--hostname".into(),
        plan.hostname.clone(),
        "--die-with-parent".into(),
    ]);
    let wd = c.working_dir.clone().or_else(|| {
        std::env::current_dir()
            .ok()
            .map(|d| d.display().to_string())
    });
    if let Some(wd) = wd {
        args.extend(["--chdir".into(), wd]);
    }
    args
}

async fn run_container(
    plan: &PodPlan,
    c: &ContainerPlan,
    ctx: &PodContext,
    mut stop: watch::Receiver<Option<Stop>>,
    prefix: &str,
) -> i32 {
    if stop.borrow().is_some() {
        return 137;
    }
    if !sandboxed(plan, ctx)
        && let Some(wd) = &c.working_dir
        && !Path::new(wd).is_dir()
    {
        ctx.sink.line(
            prefix,
            &format!(
                "cannot start container {}: its workingDir {wd} is not a directory on this host",
                c.name
            ),
        );
        return 128;
    }
    // Inside the sandbox a missing program would be bwrap's error; say it
    // as for a pod outside.
    if sandboxed(plan, ctx) && !program_exists(c) {
        ctx.sink.line(
            prefix,
            &format!(
                "cannot start {:?} (image {} is not pulled: the command runs from this host): {}",
                c.argv.first().cloned().unwrap_or_default(),
                c.image,
                std::io::Error::from(std::io::ErrorKind::NotFound)
            ),
        );
        return 128;
    }
    let mut child = match command_for(plan, c, ctx).spawn() {
        Ok(child) => child,
        Err(e) => {
            ctx.sink.line(
                prefix,
                &format!("cannot start {:?} (image {} is not pulled: the command runs from this host): {e}", c.argv.first().cloned().unwrap_or_default(), c.image),
            );
            return 128;
        }
    };
    let mut readers = tokio::task::JoinSet::new();
    let out = child.stdout.take();
    let err = child.stderr.take();
    for (pipe, sink, prefix) in [
        (
            out.map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ctx.sink.clone(),
            prefix.to_string(),
        ),
        (
            err.map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ctx.sink.clone(),
            prefix.to_string(),
        ),
    ] {
        if let Some(pipe) = pipe {
            readers.spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.line(&prefix, &line);
                }
            });
        }
    }
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let signal = |sig: nix::sys::signal::Signal| {
        if let Some(pgid) = pgid {
            let _ = nix::sys::signal::killpg(pgid, sig);
        }
    };
    let early = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop.wait_for(|s| s.is_some()) => None,
    };
    let status = match early {
        Some(status) => status,
        None => {
            let how = *stop.borrow();
            if how == Some(Stop::Kill) {
                signal(nix::sys::signal::Signal::SIGKILL);
                child.wait().await
            } else {
                match pgid {
                    // bwrap does not pass SIGTERM on (and its child dies with
                    // it): the container's processes get it, bwrap not.
                    Some(pgid) if sandboxed(plan, ctx) => {
                        term_group_but_leader(pgid);
                    }
                    _ => signal(nix::sys::signal::Signal::SIGTERM),
                }
                let grace = plan.grace;
                let within = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = tokio::time::sleep(grace) => None,
                    _ = stop.wait_for(|s| *s == Some(Stop::Kill)) => None,
                };
                match within {
                    Some(status) => status,
                    None => {
                        signal(nix::sys::signal::Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
        }
    };
    // Whatever the leader did, nothing of the container outlives it.
    signal(nix::sys::signal::Signal::SIGKILL);
    if let Some(pgid) = pgid {
        reap_group(pgid).await;
    }
    // Output still buffered in the pipes is read to its end; a process that
    // escaped the group and holds a pipe open is not waited for long.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    match status {
        Ok(s) => exit_code(s),
        Err(_) => 128,
    }
}

/// An exit status as Kubernetes reports it: the code, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}
