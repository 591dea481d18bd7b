//! The workq worker SDK (to be built).
