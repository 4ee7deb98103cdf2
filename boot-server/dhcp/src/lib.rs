//! boot-dhcp: placeholder, see the crate's issue.
