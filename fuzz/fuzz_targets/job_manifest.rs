//! The job-runner's manifest reader and template expansion on random text,
//! items and variables.
#![no_main]

mod replay {
    include!("../replay/job_manifest.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| replay::run(data));
