//! LogLog client library: async (tokio) and blocking.
