use crate::peer_connection::event::{RTCEventInternal, TaggedRTCEventInternal};
use crate::peer_connection::message::internal::{
    RTCMessageInternal, RTPMessage, TaggedRTCMessageInternal,
};

use interceptor::Packet;
use log::debug;
use shared::error::{Error, Result};
use shared::marshal::{Marshal, MarshalSize, Unmarshal};
use shared::util::is_rtcp;
use srtp::context::Context;
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Default)]
pub(crate) struct SrtpHandlerContext {
    pub(crate) local_srtp_context: Option<Context>,
    pub(crate) remote_srtp_context: Option<Context>,

    pub(crate) read_outs: VecDeque<TaggedRTCMessageInternal>,
    pub(crate) write_outs: VecDeque<TaggedRTCMessageInternal>,
    pub(crate) event_outs: VecDeque<TaggedRTCEventInternal>,

    /// An RTP packet is marshalled here before it is encrypted into a buffer of its own
    /// (Switchboard patch: one allocation per packet fewer).
    scratch: Vec<u8>,
}

/// SrtpHandler implements SRTP/RTP/RTCP Protocols handling
pub(crate) struct SrtpHandler<'a> {
    ctx: &'a mut SrtpHandlerContext,
}

impl<'a> SrtpHandler<'a> {
    pub(crate) fn new(ctx: &'a mut SrtpHandlerContext) -> Self {
        SrtpHandler { ctx }
    }

    pub(crate) fn name(&self) -> &'static str {
        "SrtpHandler"
    }
}

impl<'a>
    sansio::Protocol<TaggedRTCMessageInternal, TaggedRTCMessageInternal, TaggedRTCEventInternal>
    for SrtpHandler<'a>
{
    type Rout = TaggedRTCMessageInternal;
    type Wout = TaggedRTCMessageInternal;
    type Eout = TaggedRTCEventInternal;
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedRTCMessageInternal) -> Result<()> {
        if let RTCMessageInternal::Rtp(RTPMessage::Raw(message)) = msg.message {
            debug!("srtp read {:?}", msg.transport.peer_addr);

            #[allow(clippy::collapsible_else_if)]
            if is_rtcp(&message) {
                if let Some(context) = self.ctx.remote_srtp_context.as_mut() {
                    let mut decrypted = context.decrypt_rtcp(&message)?;
                    let rtcp_packets = rtcp::packet::unmarshal(&mut decrypted)?;
                    if rtcp_packets.is_empty() {
                        return Err(Error::Other("empty rtcp_packets".to_string()));
                    }

                    self.ctx.read_outs.push_back(TaggedRTCMessageInternal {
                        now: msg.now,
                        transport: msg.transport,
                        message: RTCMessageInternal::Rtp(RTPMessage::Packet(Packet::Rtcp(
                            rtcp_packets,
                        ))),
                    });
                } else {
                    return Err(Error::Other(format!(
                        "remote_srtp_context is not set yet for rtcp_packet {:?}",
                        msg.transport.peer_addr
                    )));
                }
            } else {
                if let Some(context) = self.ctx.remote_srtp_context.as_mut() {
                    let rtp_packet = decrypt_rtp(context, &message)?;

                    self.ctx.read_outs.push_back(TaggedRTCMessageInternal {
                        now: msg.now,
                        transport: msg.transport,
                        message: RTCMessageInternal::Rtp(RTPMessage::Packet(Packet::Rtp(
                            rtp_packet,
                        ))),
                    });
                } else {
                    return Err(Error::Other(format!(
                        "remote_srtp_context is not set yet for rtp_packet {:?}",
                        msg.transport.peer_addr
                    )));
                }
            }
        } else {
            debug!("bypass srtp read {:?}", msg.transport.peer_addr);
            self.ctx.read_outs.push_back(msg);
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.ctx.read_outs.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedRTCMessageInternal) -> Result<()> {
        let msg = self.encrypt(msg)?;
        self.ctx.write_outs.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.ctx.write_outs.pop_front()
    }

    fn handle_event(&mut self, mut evt: TaggedRTCEventInternal) -> Result<()> {
        if let RTCEventInternal::DTLSHandshakeComplete(local_srtp_context, remote_srtp_context) =
            &mut evt.event
        {
            debug!("srtp recv dtls handshake complete");

            self.ctx.local_srtp_context = local_srtp_context.take();
            self.ctx.remote_srtp_context = remote_srtp_context.take()
        }

        self.ctx.event_outs.push_back(evt);

        Ok(())
    }

    fn poll_event(&mut self) -> Option<Self::Eout> {
        self.ctx.event_outs.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<()> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Decrypts an SRTP packet into the RTP packet `rtp::Packet::unmarshal` would make of the
/// plaintext, parsing the header once: `Context::decrypt_rtp` parses it to decrypt, and the
/// unmarshal parsed the decrypted copy again (allocating for its extensions each time). The
/// payload is the plaintext after the header, less any padding, as the unmarshal cuts it.
///
/// Switchboard patch 11 (vendor/rtc/SWITCHBOARD.md).
fn decrypt_rtp(context: &mut Context, message: &[u8]) -> Result<rtp::Packet> {
    use bytes::Buf;

    let mut rest = message;
    let header = rtp::Header::unmarshal(&mut rest)?;
    let header_len = message.len() - rest.len();
    let mut payload = context
        .decrypt_rtp_with_header(message, &header)?
        .freeze();
    payload.advance(header_len);
    if header.padding {
        let padding_len = match payload.last() {
            Some(&n) if usize::from(n) <= payload.len() => usize::from(n),
            _ => return Err(Error::ErrShortPacket),
        };
        payload.truncate(payload.len() - padding_len);
    }
    Ok(rtp::Packet { header, payload })
}

impl SrtpHandler<'_> {
    /// What `handle_write` queues for `msg`: RTP and RTCP encrypted, anything else unchanged.
    /// (Switchboard patch: split out of `handle_write` for `write_rtp_direct`.)
    pub(crate) fn encrypt(
        &mut self,
        msg: TaggedRTCMessageInternal,
    ) -> Result<TaggedRTCMessageInternal> {
        if let RTCMessageInternal::Rtp(message) = msg.message {
            debug!("srtp write {:?}", msg.transport.peer_addr);

            let encrypted = match message {
                RTPMessage::Packet(Packet::Rtcp(rtcp_packets)) => {
                    if rtcp_packets.is_empty() {
                        return Err(Error::Other("empty rtcp_packets".to_string()));
                    };

                    if let Some(context) = self.ctx.local_srtp_context.as_mut() {
                        let packet = rtcp::packet::marshal(&rtcp_packets)?;
                        context.encrypt_rtcp(&packet)?
                    } else {
                        return Err(Error::Other(format!(
                            "local_srp_context is not set yet for rtcp_packet {:?}",
                            msg.transport.peer_addr
                        )));
                    }
                }
                RTPMessage::Packet(Packet::Rtp(rtp_message)) => {
                    if let Some(context) = self.ctx.local_srtp_context.as_mut() {
                        // Switchboard patch: marshalled into a reused buffer, and encrypted
                        // with the header at hand instead of `encrypt_rtp` parsing it again.
                        let scratch = &mut self.ctx.scratch;
                        scratch.clear();
                        scratch.resize(rtp_message.marshal_size(), 0);
                        let n = rtp_message.marshal_to(scratch)?;
                        context.encrypt_rtp_with_header(&scratch[..n], &rtp_message.header)?
                    } else {
                        return Err(Error::Other(format!(
                            "local_srtp_context is not set yet for rtp_packet {:?}",
                            msg.transport.peer_addr
                        )));
                    }
                }
                RTPMessage::Raw(raw_packet) => {
                    // Bypass
                    debug!("Bypass srtp write {:?}", msg.transport.peer_addr);
                    raw_packet
                }
                RTPMessage::TrackPacket(_) => {
                    return Err(Error::Other(
                        "application level track message should never reach here".to_string(),
                    ));
                }
                RTPMessage::Packet(_) => {
                    return Err(Error::Other(
                        "unsupported packet kind for srtp write".to_string(),
                    ));
                }
            };

            Ok(TaggedRTCMessageInternal {
                now: msg.now,
                transport: msg.transport,
                message: RTCMessageInternal::Rtp(RTPMessage::Raw(encrypted)),
            })
        } else {
            // Bypass
            debug!("Bypass srtp write {:?}", msg.transport.peer_addr);
            Ok(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use srtp::protection_profile::ProtectionProfile;

    /// `decrypt_rtp` (Switchboard patch 11) makes the packet that `Packet::unmarshal` made of
    /// `Context::decrypt_rtp`'s plaintext: header extensions kept, padding cut off.
    #[test]
    fn decrypting_parses_the_header_once_into_the_same_packet() {
        let provider = crypto::default_provider().expect("a crypto provider");
        let context = || {
            Context::new(
                &[7; 16],
                &[9; 12],
                ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                provider.crypto(),
            )
            .expect("an SRTP context")
        };
        let (mut sender, mut before, mut after) = (context(), context(), context());
        for (seq, padding) in [(1u16, false), (2, true)] {
            let mut header = rtp::Header {
                version: 2,
                padding,
                payload_type: 96,
                sequence_number: seq,
                timestamp: 3000,
                ssrc: 5,
                ..Default::default()
            };
            header
                .set_extension(1, Bytes::from_static(&[0xab, 0xcd]))
                .expect("a one-byte extension");
            let mut plain = header.marshal().expect("a header").to_vec();
            plain.extend_from_slice(&[1, 2, 3, 4, 5]);
            if padding {
                plain.extend_from_slice(&[0, 0, 3]);
            }
            let encrypted = sender.encrypt_rtp(&plain).expect("encrypted");

            let mut decrypted = before.decrypt_rtp(&encrypted).expect("decrypted");
            let expected = rtp::Packet::unmarshal(&mut decrypted).expect("a packet");
            let packet = decrypt_rtp(&mut after, &encrypted).expect("a packet");
            assert_eq!(packet, expected);
            assert_eq!(&packet.payload[..], &[1, 2, 3, 4, 5]);
            assert_eq!(packet.header.get_extension(1).as_deref(), Some(&[0xab, 0xcd][..]));
        }
    }
}
