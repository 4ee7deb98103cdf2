//! Discovery: the SendTargets text exchange (RFC 7143 Appendix C). A peer is shown only
//! the targets its address may open, each with the portal it reached us on.

use crate::pdu::encode_text;

/// Answers `SendTargets=<value>`: `All` lists every target in `visible`, a target name
/// lists that one (when visible), anything else lists nothing. `portal` is the
/// `address:port` the initiator connected to.
pub fn send_targets(value: &str, visible: &[String], portal: &str) -> Vec<u8> {
    let mut pairs = Vec::new();
    for t in visible {
        if value == "All" || value == t {
            pairs.push(("TargetName".to_string(), t.clone()));
            pairs.push(("TargetAddress".to_string(), format!("{portal},1")));
        }
    }
    encode_text(&pairs)
}

/// The `address:port` form of a portal, with brackets for IPv6.
pub fn portal(addr: std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => a.to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_visible_targets() {
        let v = vec!["iqn.a".to_string(), "iqn.b".to_string()];
        let all = crate::pdu::parse_text(&send_targets("All", &v, "10.0.0.1:3260")).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[1].1, "10.0.0.1:3260,1");
        let one = crate::pdu::parse_text(&send_targets("iqn.b", &v, "h:1")).unwrap();
        assert_eq!(one[0].1, "iqn.b");
        assert!(send_targets("iqn.c", &v, "h:1").is_empty());
    }
}
