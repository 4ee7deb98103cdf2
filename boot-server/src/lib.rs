//! boot-server: network boot service (DHCP, TFTP, HTTP iPXE, NBD) with a
//! boot-image table in an embedded SQLite store.
//!
//! Layout: protocol servers live in their own crates (`boot-dhcp`,
//! `boot-tftp`, `boot-nbd`) and only parse and answer; [`plan`] decides what
//! each node boots; [`store`] owns durable state; [`serve`] wires them up.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod disks;
pub mod http;
pub mod images;
pub mod plan;
pub mod serve;
pub mod store;
