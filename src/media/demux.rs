//! Classifying datagrams on the shared media socket (RFC 7983) and reading the STUN
//! USERNAME that routes a new source address to its peer connection.

/// What a datagram looks like from its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP/SRTCP once keyed).
    Rtp,
    Unknown,
}

pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Rtp,
        _ => DatagramKind::Unknown,
    }
}

const STUN_HEADER_LEN: usize = 20;
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// The local ufrag of a STUN Binding request: its USERNAME is `local:remote` (RFC 8445 §7.2.2).
///
/// Returns `None` for anything that is not a well-formed Binding request with a USERNAME.
pub fn stun_binding_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < STUN_HEADER_LEN || classify(datagram) != DatagramKind::Stun {
        return None;
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let msg_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if msg_type != STUN_BINDING_REQUEST
        || datagram[4..8] != STUN_MAGIC_COOKIE
        || msg_len % 4 != 0
        || STUN_HEADER_LEN + msg_len > datagram.len()
    {
        return None;
    }
    let mut attrs = &datagram[STUN_HEADER_LEN..STUN_HEADER_LEN + msg_len];
    while attrs.len() >= 4 {
        let typ = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if typ == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (local, _remote) = username.split_once(':')?;
            return (!local.is_empty()).then_some(local);
        }
        let padded = 4 + len.div_ceil(4) * 4;
        attrs = attrs.get(padded..)?;
    }
    None
}

const DTLS_HANDSHAKE: u8 = 22;
const DTLS_RECORD_HEADER_LEN: usize = 13;
const DTLS_CLIENT_HELLO: u8 = 1;

/// Whether a datagram starts with a DTLS ClientHello in the clear (epoch 0): the first flight of
/// a handshake in which we are the client.
pub fn is_dtls_client_hello(datagram: &[u8]) -> bool {
    datagram.len() > DTLS_RECORD_HEADER_LEN
        && datagram[0] == DTLS_HANDSHAKE
        && datagram[3..5] == [0, 0]
        && datagram[DTLS_RECORD_HEADER_LEN] == DTLS_CLIENT_HELLO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_client_hello_from_other_dtls_and_from_rtp() {
        // Record: handshake, DTLS 1.2, epoch 0, sequence 0, length; then a ClientHello header.
        let mut hello = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12];
        hello.extend_from_slice(&[1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 8]);
        assert!(is_dtls_client_hello(&hello));
        let mut server_hello = hello.clone();
        server_hello[13] = 2;
        assert!(!is_dtls_client_hello(&server_hello));
        let mut next_epoch = hello.clone();
        next_epoch[4] = 1;
        assert!(
            !is_dtls_client_hello(&next_epoch),
            "encrypted, so not a hello"
        );
        assert!(!is_dtls_client_hello(&hello[..13]));
        assert!(!is_dtls_client_hello(&[
            0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ]));
    }

    fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (typ, value) in attrs {
            body.extend_from_slice(&typ.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0, 1]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 254]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 96]), DatagramKind::Rtp);
        assert_eq!(classify(&[0xff]), DatagramKind::Unknown);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }

    #[test]
    fn reads_local_ufrag_after_other_attributes() {
        let msg = binding_request(&[(0x8029, &[1; 8]), (ATTR_USERNAME, b"srvUfrag:cli")]);
        assert_eq!(stun_binding_local_ufrag(&msg), Some("srvUfrag"));
    }

    #[test]
    fn rejects_malformed_stun() {
        let good = binding_request(&[(ATTR_USERNAME, b"abc:def")]);
        assert_eq!(stun_binding_local_ufrag(&good), Some("abc"));
        // truncated
        assert_eq!(stun_binding_local_ufrag(&good[..good.len() - 2]), None);
        // wrong cookie
        let mut bad = good.clone();
        bad[4] = 0;
        assert_eq!(stun_binding_local_ufrag(&bad), None);
        // a response, not a request
        let mut resp = good.clone();
        resp[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert_eq!(stun_binding_local_ufrag(&resp), None);
        // attribute length pointing past the end
        let mut overlong = good.clone();
        overlong[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(stun_binding_local_ufrag(&overlong), None);
        // no colon, empty local part, no username
        assert_eq!(
            stun_binding_local_ufrag(&binding_request(&[(ATTR_USERNAME, b"abc")])),
            None
        );
        assert_eq!(
            stun_binding_local_ufrag(&binding_request(&[(ATTR_USERNAME, b":x")])),
            None
        );
        assert_eq!(
            stun_binding_local_ufrag(&binding_request(&[(0x8029, &[0; 8])])),
            None
        );
        assert_eq!(stun_binding_local_ufrag(&[0u8; 3]), None);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed & 0x03) as u8 | (seed >> 8) as u8 & 0xfc
                })
                .collect();
            let _ = stun_binding_local_ufrag(&buf);
        }
    }
}
