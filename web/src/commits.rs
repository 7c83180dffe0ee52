//! commits (being built).
