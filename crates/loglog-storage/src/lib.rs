//! LogLog's segment files: append, group commit, recovery, truncate, trim.
