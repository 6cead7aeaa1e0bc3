//! LogLog's consensus core: Raft over byte offsets, sans-IO.
