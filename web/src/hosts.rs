//! hosts (being built).
