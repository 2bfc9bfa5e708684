//! Deterministic simulator for dsm's protocol engines
