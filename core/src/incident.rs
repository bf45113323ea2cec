//! incident (in progress)
