// The body of the `job_manifest` fuzz target, shared (by `include!`) with
// `job-runner/tests/fuzz_regressions.rs`, which replays the inputs kept in
// `fuzz/regressions/job_manifest/`.
//
// The input is split at 0xFF bytes: the first part is the manifest text, the
// next ones are `$ITEM` values (at most 4), and a part starting with `=` is a
// `--set NAME=VALUE` argument instead. The first byte's low bit says whether
// the text is read as a Jinja template (`job.yaml.j2`) or as plain YAML with
// `$ITEM` (`job.yaml`). It goes through the job-runner's public API: the
// manifest reader (`manifest::parse_text`, which expands the template, parses
// every YAML document and validates each object) and `template::parse_var`.
// Errors are expected; a panic is a finding.

/// Reads the manifest `data` encodes; panics only if the job-runner does.
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xff);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut opts = job_runner::template::TemplateOptions::default();
    for part in parts.take(6) {
        let part = String::from_utf8_lossy(part).into_owned();
        if let Some(var) = part.strip_prefix('=') {
            if let Ok((k, v)) = job_runner::template::parse_var(var) {
                opts.vars.insert(k, v);
            }
        } else if opts.items.len() < 4 {
            opts.items.push(part);
        }
    }
    let name = if flags & 1 == 1 {
        "job.yaml.j2"
    } else {
        "job.yaml"
    };
    let mut loaded = job_runner::manifest::Loaded::default();
    let _ = job_runner::manifest::parse_text(
        name,
        std::path::Path::new("."),
        &text,
        &opts,
        &mut loaded,
    );
}
