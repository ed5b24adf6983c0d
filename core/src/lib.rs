//! Sotto's client core (placeholder while the crate is built up).
