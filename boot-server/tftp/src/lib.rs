//! boot-tftp: placeholder, see the crate's issue.
