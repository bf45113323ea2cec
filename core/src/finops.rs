//! finops (in progress)
