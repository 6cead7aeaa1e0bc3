//! The LogLog node: consensus core, storage and network wired together; also embeddable as a library.
