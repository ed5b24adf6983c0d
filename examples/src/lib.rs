//! Shared helpers of the Sotto examples (placeholder).
