//! The `tidemark` command line: inspection, verification and the demo.
