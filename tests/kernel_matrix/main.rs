//! Integration tests: kernel_matrix.
