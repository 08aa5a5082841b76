//! A fault-injecting file system for tests.
