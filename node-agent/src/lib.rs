//! Node agent library: everything the `node-agent` binary does, split into
//! small modules so each can be tested on its own.

pub mod agent;
pub mod app;
pub mod bootptr;
pub mod client;
pub mod clone;
pub mod commands;
pub mod config;
pub mod freeze;
pub mod health;
pub mod hooks;
pub mod host;
pub mod identity;
pub mod imagecache;
pub mod inventory;
pub mod iscsi;
pub mod nbd;
pub mod outbox;
pub mod power;
pub mod slot;
