//! Where overlays live when several servers share one store: each overlay
//! has one serving server (the one whose `disks_dir` holds its file and
//! which exports it over NBD/iSCSI), and a disk operation on an overlay
//! another server serves is queued for that server as a [`DiskRequest`].

use serde::{Deserialize, Serialize};

/// An overlay and the server that holds and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OverlayRecord {
    /// The overlay's id.
    pub overlay: String,
    /// The serving server's registry name (`[store] server_name`).
    pub server: String,
    /// The base it is built on.
    pub base: String,
    /// When it was recorded (ms since the Unix epoch).
    pub created_ms: i64,
}

/// A disk operation that only the overlay's serving server can carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum DiskOp {
    /// Snapshot `overlay` as `snapshot` (held by the same server).
    Snapshot {
        /// The overlay to copy.
        overlay: String,
        /// The new overlay's id.
        snapshot: String,
    },
    /// Delete the overlay (refused while attached).
    Delete {
        /// The overlay's id.
        overlay: String,
    },
    /// Rebuild the export table now (an attachment changed elsewhere).
    Refresh,
    /// Close every open NBD connection and iSCSI session to the overlay;
    /// with `wait_ms`, wait until their requests in flight have ended
    /// (fencing). The result is the number closed.
    Revoke {
        /// The overlay's id.
        overlay: String,
        /// How long to wait for in-flight requests, if at all.
        wait_ms: Option<u64>,
    },
}

/// How far a [`DiskRequest`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRequestStatus {
    /// Waiting for the serving server.
    Queued,
    /// Taken by the serving server, not finished.
    Taken,
    /// Done; the result is the operation's answer (JSON).
    Done,
    /// Failed; the result is the error.
    Failed,
}

impl DiskRequestStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskRequestStatus::Queued => "queued",
            DiskRequestStatus::Taken => "taken",
            DiskRequestStatus::Done => "done",
            DiskRequestStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<DiskRequestStatus> {
        Some(match s {
            "queued" => DiskRequestStatus::Queued,
            "taken" => DiskRequestStatus::Taken,
            "done" => DiskRequestStatus::Done,
            "failed" => DiskRequestStatus::Failed,
            _ => return None,
        })
    }
}

/// A disk operation queued for the server that serves the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    /// Its id.
    pub id: i64,
    /// The server that is to carry it out.
    pub server: String,
    /// What to do.
    pub op: DiskOp,
    /// How far it got.
    pub status: DiskRequestStatus,
    /// The answer (done) or the error (failed); empty before.
    pub result: String,
}
