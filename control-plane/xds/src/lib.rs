//! xDS server.
