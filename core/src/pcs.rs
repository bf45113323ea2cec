//! pcs (in progress)
