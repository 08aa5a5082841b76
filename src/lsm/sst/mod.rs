//! Sorted string tables (SSTs): immutable, block-based files of internal keys.
