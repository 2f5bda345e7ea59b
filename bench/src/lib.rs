//! Shared pieces of `make bench`.
