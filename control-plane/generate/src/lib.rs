//! Generators (pass-through for now).
