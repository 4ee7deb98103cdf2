//! Node agent library: everything the `node-agent` binary does, split into
//! small modules so each can be tested on its own.

pub mod bootptr;
pub mod client;
pub mod config;
pub mod inventory;
pub mod nbd;
