//! The workq job-runner (to be built).
