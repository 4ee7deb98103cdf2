//! boot-nbd: placeholder, see the crate's issue.
