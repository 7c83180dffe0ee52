//! jobs (being built).
