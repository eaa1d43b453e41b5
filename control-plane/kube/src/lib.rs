//! The Kubernetes source.
