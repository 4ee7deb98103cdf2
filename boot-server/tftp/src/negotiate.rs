//! RFC 2347 option negotiation: turns the options a client asked for into the
//! parameters of the transfer and the OACK that announces them. Only options the
//! client requested are acknowledged.
//!
//! A requested `timeout` above [`MAX_CLIENT_TIMEOUT_SECS`] is not honoured: it
//! is left out of the OACK and the server's own timeout applies (RFC 2349
//! lets a server decline an option that way). Honouring 255 s would let any
//! unauthenticated client hold a transfer slot for 255 s x retries.

use std::time::Duration;

use crate::packet::{encode_oack, RequestOptions, MAX_BLKSIZE, MIN_BLKSIZE};
use crate::TftpConfig;

/// Largest window accepted: block numbers in a window must stay distinct
/// modulo 65536 (and distinct from the block before the window).
pub const MAX_WINDOW: u16 = 32768;

/// Largest retransmission timeout (seconds) a client may negotiate.
pub const MAX_CLIENT_TIMEOUT_SECS: u8 = 10;

/// Parameters of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes of file data per DATA packet (512 unless negotiated).
    pub blksize: usize,
    /// DATA packets sent before waiting for an ACK (1 unless negotiated).
    pub windowsize: u16,
    /// Retransmission timeout in force for this transfer.
    pub timeout: Duration,
    /// The OACK to send first, if the client asked for any supported option.
    pub oack: Option<Vec<u8>>,
}

/// Negotiates the transfer of a file of `size` bytes.
pub fn negotiate(opts: &RequestOptions, cfg: &TftpConfig, size: u64) -> Negotiated {
    let mut acked: Vec<(&str, String)> = Vec::new();
    let mut blksize = 512usize;
    let mut windowsize = 1u16;
    let mut timeout = cfg.timeout;
    if let Some(req) = opts.blksize {
        let cap = cfg.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        let v = req.min(cap);
        blksize = usize::from(v);
        acked.push(("blksize", v.to_string()));
    }
    if opts.tsize.is_some() {
        acked.push(("tsize", size.to_string()));
    }
    if let Some(t) = opts
        .timeout
        .filter(|t| (1..=MAX_CLIENT_TIMEOUT_SECS).contains(t))
    {
        timeout = Duration::from_secs(u64::from(t));
        acked.push(("timeout", t.to_string()));
    }
    if let Some(w) = opts.windowsize {
        let cap = cfg.max_windowsize.clamp(1, MAX_WINDOW);
        windowsize = w.min(cap);
        acked.push(("windowsize", windowsize.to_string()));
    }
    Negotiated {
        blksize,
        windowsize,
        timeout,
        oack: (!acked.is_empty()).then(|| encode_oack(&acked)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_options_no_oack() {
        let n = negotiate(&RequestOptions::default(), &TftpConfig::default(), 10);
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert!(n.oack.is_none());
    }

    #[test]
    fn caps_and_real_tsize() {
        let opts = RequestOptions {
            blksize: Some(65464),
            tsize: Some(0),
            timeout: Some(3),
            windowsize: Some(1000),
        };
        let n = negotiate(&opts, &TftpConfig::default(), 123456);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack.unwrap(),
            b"\x00\x06blksize\x001468\x00tsize\x00123456\x00timeout\x003\x00windowsize\x0064\x00"
        );
    }

    #[test]
    fn timeout_above_cap_is_declined() {
        let cfg = TftpConfig::default();
        for t in [11u8, 60, 255] {
            let opts = RequestOptions {
                timeout: Some(t),
                ..Default::default()
            };
            let n = negotiate(&opts, &cfg, 1);
            assert_eq!(n.timeout, cfg.timeout, "timeout {t}");
            assert!(n.oack.is_none(), "timeout {t} must not be acknowledged");
        }
        let opts = RequestOptions {
            timeout: Some(10),
            ..Default::default()
        };
        let n = negotiate(&opts, &cfg, 1);
        assert_eq!(n.timeout, Duration::from_secs(10));
        assert_eq!(n.oack.unwrap(), b"\x00\x06timeout\x0010\x00");
    }

    #[test]
    fn only_requested_options_acked() {
        let opts = RequestOptions {
            blksize: Some(1024),
            ..Default::default()
        };
        let n = negotiate(&opts, &TftpConfig::default(), 5);
        assert_eq!(n.blksize, 1024);
        assert_eq!(n.oack.unwrap(), b"\x00\x06blksize\x001024\x00");
    }
}
