//! Integration tests: kernel.
