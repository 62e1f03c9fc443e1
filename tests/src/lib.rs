//! Builders that start the real binaries for the end-to-end tests.
