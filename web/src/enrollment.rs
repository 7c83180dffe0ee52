//! enrollment (being built).
