//! overview (being built).
