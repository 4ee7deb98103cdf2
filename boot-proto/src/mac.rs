//! The one text form of a MAC address (lowercase, colon-separated:
//! `52:54:00:12:34:ab`), used by the DHCP crate's logs and the server's
//! `MacAddr`, so a node's MAC reads the same in every log line and API.

use std::fmt;

/// Writes `mac` in the canonical form. Any length is accepted (a DHCP
/// `chaddr` may hold other hardware types); no octet gives an empty text.
pub fn write_mac<W: fmt::Write + ?Sized>(w: &mut W, mac: &[u8]) -> fmt::Result {
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            w.write_char(':')?;
        }
        write!(w, "{b:02x}")?;
    }
    Ok(())
}

/// `mac` in the canonical form, as a new string.
pub fn fmt_mac(mac: &[u8]) -> String {
    let mut s = String::with_capacity(mac.len() * 3);
    // Writing into a String cannot fail.
    let _ = write_mac(&mut s, mac);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text() {
        assert_eq!(
            fmt_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0xab]),
            "52:54:00:12:34:ab"
        );
        assert_eq!(fmt_mac(&[0xff]), "ff");
        assert_eq!(fmt_mac(&[]), "");
    }
}
