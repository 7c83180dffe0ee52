//! chart (being built).
