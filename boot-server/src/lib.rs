//! boot-server: network boot service (DHCP, TFTP, HTTP iPXE, NBD, iSCSI) with a
//! boot-image table in an embedded SQLite store.
//!
//! Layers, data flowing one way: protocol crates (`boot-dhcp`, `boot-tftp`,
//! `boot-nbd`, `boot-iscsi`) parse and answer through [`adapters`], [`disks`]
//! and [`iscsi`]; the
//! [`plan`] decides what each node boots; the [`control`] layer is the one
//! path for every admin operation (REST handlers in [`http`], and the
//! [`cli`] as a client of that API); the [`store`] owns durable state; the
//! [`model`] is shared by all; [`events`] records and broadcasts what
//! happened; [`metrics`] and [`alerts`] report it to Prometheus and
//! webhooks; [`serve`] wires them up.

pub mod adapters;
pub mod alerts;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod control;
pub mod disks;
pub mod engine;
pub mod events;
pub mod fsutil;
pub mod handoff;
pub mod http;
pub mod images;
pub mod imagesync;
pub mod iscsi;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod power;
pub mod secret;
pub mod serve;
pub mod store;
pub mod tls;
pub mod watch;
