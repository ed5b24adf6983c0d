//! UniFFI bindings of the Sotto client API (placeholder).
