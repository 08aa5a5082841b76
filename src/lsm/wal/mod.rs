//! The write-ahead log: crc32c-framed records in fixed-size blocks.
