pub(crate) mod datachannel;
pub(crate) mod demuxer;
pub(crate) mod dtls;
pub(crate) mod endpoint;
pub(crate) mod ice;
pub(crate) mod interceptor;
pub(crate) mod sctp;
pub(crate) mod srtp;

use crate::peer_connection::RTCPeerConnection;
use crate::peer_connection::event::RTCPeerConnectionEvent;
use crate::peer_connection::event::{RTCEventInternal, TaggedRTCEvent, TaggedRTCEventInternal};
use crate::peer_connection::handler::datachannel::{DataChannelHandler, DataChannelHandlerContext};
use crate::peer_connection::handler::demuxer::{DemuxerHandler, DemuxerHandlerContext};
use crate::peer_connection::handler::dtls::{DtlsHandler, DtlsHandlerContext};
use crate::peer_connection::handler::endpoint::{EndpointHandler, EndpointHandlerContext};
use crate::peer_connection::handler::ice::{IceHandler, IceHandlerContext};
use crate::peer_connection::handler::interceptor::{InterceptorHandler, InterceptorHandlerContext};
use crate::peer_connection::handler::sctp::{SctpHandler, SctpHandlerContext};
use crate::peer_connection::handler::srtp::{SrtpHandler, SrtpHandlerContext};
use crate::peer_connection::message::{
    RTCMessage, TaggedRTCMessage,
    internal::{
        ApplicationMessage, DTLSMessage, DataChannelEvent, RTCMessageInternal, RTPMessage,
        TaggedRTCMessageInternal,
    },
};
use crate::peer_connection::state::peer_connection_state::RTCPeerConnectionState;
use crate::peer_connection::state::signaling_state::RTCSignalingState;
use crate::rtp_transceiver::SSRC;
use crate::statistics::accumulator::RTCStatsAccumulator;
use ::interceptor::Packet;
use log::warn;
use shared::TaggedBytesMut;
use shared::error::{Error, flatten_errs};
use std::collections::VecDeque;
use std::time::Instant;

/// Forward handler list - invokes callback with handler list
macro_rules! forward_handlers {
    ($callback:ident!($($args:tt)*)) => {
        $callback!(
            $($args)*,
            [
                get_demuxer_handler,
                get_ice_handler,
                get_dtls_handler,
                get_sctp_handler,
                get_datachannel_handler,
                get_srtp_handler,
                get_interceptor_handler,
                get_endpoint_handler
            ]
        )
    };
}

/// The handlers a read that `read_srtp_direct` took reaches, in read order (Switchboard patch
/// 9: `pump_reads_after_srtp`, `pump_events_after_srtp`, `poll_timeout_after_srtp_reads`).
macro_rules! handlers_from_srtp {
    ($callback:ident!($($args:tt)*)) => {
        $callback!(
            $($args)*,
            [
                get_srtp_handler,
                get_interceptor_handler,
                get_endpoint_handler
            ]
        )
    };
}

/// Reverse handler list - invokes callback with handler list
macro_rules! reverse_handlers {
    ($callback:ident!($($args:tt)*)) => {
        $callback!(
            $($args)*,
            [
                get_endpoint_handler,
                get_interceptor_handler,
                get_srtp_handler,
                get_datachannel_handler,
                get_sctp_handler,
                get_dtls_handler,
                get_ice_handler,
                get_demuxer_handler
            ]
        )
    };
}

/// Helper macro that processes a list of handlers with code blocks
macro_rules! process_handler_list {
    (call_macro: process_handler!($self:expr, $handler:ident, $code:block), [$($getter:ident),+]) => {{
        $(
            {
                let mut $handler = $self.$getter();
                $code
            }
        )+
    }};
}

/// Unified macro to iterate over handlers with code blocks
macro_rules! for_each_handler {
    // Forward order: execute code block for each handler
    (forward: $macro:ident!($($args:tt)*)) => {
        forward_handlers!(process_handler_list!(call_macro: $macro!($($args)*)))
    };

    // Reverse order: execute code block for each handler
    (reverse: $macro:ident!($($args:tt)*)) => {
        reverse_handlers!(process_handler_list!(call_macro: $macro!($($args)*)))
    };
}

/// One read walk over the handlers listed: each handler reads what is in `$routs`, and what it
/// lets out is what the next one reads (`pump_reads` walks all eight, `pump_reads_after_srtp`
/// the three after the demuxer's, ICE's, DTLS's, SCTP's and the data channels'; Switchboard
/// patch 8, vendor/rtc/SWITCHBOARD.md).
macro_rules! walk_reads {
    ($self:expr, $routs:ident, [$($getter:ident),+]) => {{
        use sansio::Protocol;
        process_handler_list!(call_macro: process_handler!($self, handler, {
            while let Some(msg) = $routs.pop_front() {
                if let Err(err) = handler.handle_read(msg) {
                    warn!("{}.handle_read got error: {}", handler.name(), err);
                }
            }
            while let Some(msg) = handler.poll_read() {
                $routs.push_back(msg);
            }
        }), [$($getter),+])
    }};
}

/// One event walk over the handlers listed, as `walk_reads!` for reads: each handler handles
/// the events raised before it in `$eouts`, and what it raises joins them; `$raised` is set if
/// any handler raised one (`pump_events` walks all eight, `pump_events_after_srtp` the three
/// from SRTP on; Switchboard patch 9, vendor/rtc/SWITCHBOARD.md).
macro_rules! walk_events {
    ($self:expr, $eouts:ident, $raised:ident, [$($getter:ident),+]) => {{
        use sansio::Protocol;
        process_handler_list!(call_macro: process_handler!($self, handler, {
            while let Some(evt) = $eouts.pop_front() {
                if let Err(err) = handler.handle_event(evt) {
                    warn!("{}.handle_event got error: {}", handler.name(), err);
                }
            }
            while let Some(msg) = handler.poll_event() {
                $raised = true;
                $eouts.push_back(msg);
            }
        }), [$($getter),+])
    }};
}

/// One write walk over the handlers listed (towards the wire), as `walk_reads!` for reads
/// (`flush_writes` walks all eight, `flush_writes_after_srtp` the three down to SRTP and the
/// rest only for what those let out; Switchboard patch 9, vendor/rtc/SWITCHBOARD.md).
macro_rules! walk_writes {
    ($self:expr, $wouts:ident, [$($getter:ident),+]) => {{
        use sansio::Protocol;
        process_handler_list!(call_macro: process_handler!($self, handler, {
            while let Some(msg) = $wouts.pop_front() {
                if let Err(err) = handler.handle_write(msg) {
                    warn!("{}.handle_write got error: {}", handler.name(), err);
                }
            }
            while let Some(msg) = handler.poll_write() {
                $wouts.push_back(msg);
            }
        }), [$($getter),+])
    }};
}

/// Lowers `$eto` to the earliest `poll_timeout` of the handlers listed (Switchboard patch 9).
macro_rules! earliest_timeout {
    ($self:expr, $eto:ident, [$($getter:ident),+]) => {{
        process_handler_list!(call_macro: process_handler!($self, handler, {
            if let Some(next) = sansio::Protocol::poll_timeout(&mut handler) {
                $eto = Some($eto.map_or(next, |curr: Instant| curr.min(next)));
            }
        }), [$($getter),+])
    }};
}

pub(crate) struct PipelineContext {
    // Handler contexts
    pub(crate) demuxer_handler_context: DemuxerHandlerContext,
    pub(crate) ice_handler_context: IceHandlerContext,
    pub(crate) dtls_handler_context: DtlsHandlerContext,
    pub(crate) sctp_handler_context: SctpHandlerContext,
    pub(crate) datachannel_handler_context: DataChannelHandlerContext,
    pub(crate) srtp_handler_context: SrtpHandlerContext,
    pub(crate) interceptor_handler_context: InterceptorHandlerContext,
    pub(crate) endpoint_handler_context: EndpointHandlerContext,

    // Pipeline
    /// Media (RTP/RTCP) ready for the application.
    ///
    /// Split from data-channel output deliberately. Back-pressure is applied by *not draining
    /// a queue* — that is what grows [`Self::data_read_outs`], bounds the SCTP drain,
    /// lowers `a_rwnd` and throttles the peer. While both kinds shared one queue, a caller
    /// applying that back-pressure necessarily stopped draining media too, so a slow
    /// data-channel consumer froze video on the same connection for as long as it stalled —
    /// video that arrives over SRTP and is subject to none of SCTP's flow control.
    pub(crate) media_read_outs: VecDeque<TaggedRTCMessage>,
    /// Data-channel messages ready for the application.
    ///
    /// Its length *is* the back-pressure signal the SCTP handler bounds against, so a caller
    /// that declines to drain it throttles the peer — and nothing else. No counter to keep in
    /// step with it: the queue is the count.
    pub(crate) data_read_outs: VecDeque<TaggedRTCMessage>,
    pub(crate) write_outs: VecDeque<TaggedBytesMut>,
    pub(crate) event_outs: VecDeque<RTCPeerConnectionEvent>,

    // Statistics accumulator
    pub(crate) stats: RTCStatsAccumulator,

    /// The newest instant the pipeline has been given, through a datagram, a write or a timeout.
    ///
    /// `close()` takes no time of its own, and this crate reads no clock, so the `close_notify`
    /// it sends is stamped with this.
    pub(crate) now: Instant,

    /// The earliest deadline of the five handlers before SRTP (demuxer, ICE, DTLS, SCTP, data
    /// channels), as of the last `poll_timeout`: a read that `read_srtp_direct` takes moves
    /// none of their timers (Switchboard patch 9, `poll_timeout_after_srtp_reads`).
    pub(crate) timeout_before_srtp: Option<Instant>,
}

impl PipelineContext {
    fn observe(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }
}

impl RTCPeerConnection {
    /*
     Pipeline Flow (Read Path):
     Raw Bytes -> Demuxer -> ICE -> DTLS -> SCTP -> DataChannel -> SRTP -> Interceptor -> Endpoint -> Application

     Pipeline Flow (Write Path):
     Application -> Endpoint -> Interceptor -> SRTP -> DataChannel -> SCTP -> DTLS -> ICE -> Demuxer -> Raw Bytes
    */

    pub(crate) fn get_demuxer_handler(&mut self) -> DemuxerHandler<'_> {
        DemuxerHandler::new(
            &mut self.pipeline_context.demuxer_handler_context,
            &mut self.pipeline_context.stats,
        )
    }

    pub(crate) fn get_ice_handler(&mut self) -> IceHandler<'_> {
        IceHandler::new(
            &mut self.pipeline_context.ice_handler_context,
            &mut self.pipeline_context.stats,
        )
    }

    pub(crate) fn get_dtls_handler(&mut self) -> DtlsHandler<'_> {
        DtlsHandler::new(
            &mut self.pipeline_context.dtls_handler_context,
            &mut self.pipeline_context.stats,
        )
    }

    /// Next media (RTP/RTCP) message for the application, if any.
    ///
    /// Never affected by data-channel back-pressure. Media arrives over SRTP and is subject to
    /// none of SCTP's flow control, so a caller throttling a slow data-channel consumer must
    /// still be able to deliver video — draining this is how.
    ///
    /// Most callers should use [`poll_read`](sansio::Protocol::poll_read), which interleaves
    /// media and data-channel messages by the instant each was observed. Reach for this split
    /// pair only to drain one kind without the other.
    #[doc(hidden)]
    pub fn poll_media_read(&mut self) -> Option<TaggedRTCMessage> {
        self.pipeline_context.media_read_outs.pop_front()
    }

    /// Next data-channel message for the application, if any.
    ///
    /// **Declining to call this is how back-pressure is applied.** Undrained messages leave
    /// bytes in SCTP's reassembly queue, which lowers the receiver-window credit advertised in
    /// every SACK, which tells the peer to slow down. Stop calling it while the application is
    /// behind, resume when it catches up.
    ///
    /// Most callers should use [`poll_read`](sansio::Protocol::poll_read), which interleaves
    /// media and data-channel messages by the instant each was observed; declining to call
    /// *that* applies the same back-pressure. Reach for this split pair only to drain one kind
    /// without the other.
    #[doc(hidden)]
    pub fn poll_data_read(&mut self) -> Option<TaggedRTCMessage> {
        self.pipeline_context.data_read_outs.pop_front()
    }

    pub(crate) fn get_sctp_handler(&mut self) -> SctpHandler<'_> {
        // The SCTP handler bounds how much it pulls out of the reassembly queues against what
        // the application has not yet consumed. That backlog lives here, not in the handler's
        // own `read_outs` — the pipeline empties that within a single `handle_read` — and it
        // is data-channel output only, so unrelated media cannot throttle SCTP.
        let downstream_backlog = self.pipeline_context.data_read_outs.len();
        SctpHandler::new(
            &mut self.pipeline_context.sctp_handler_context,
            downstream_backlog,
        )
    }

    pub(crate) fn get_datachannel_handler(&mut self) -> DataChannelHandler<'_> {
        // Read the Copy values before `&mut self.data_channels` borrows self mutably. The
        // handler needs the DTLS role to give stream ids the parity RFC 8832 §6 requires, and
        // the negotiated stream count to bound them.
        let dtls_role = self.dtls_transport().role();
        let max_channels = self.sctp_transport().max_channels();
        DataChannelHandler::new(
            &mut self.pipeline_context.datachannel_handler_context,
            &mut self.data_channels,
            &mut self.pipeline_context.stats,
            self.setting_engine.data_channel.dcep_handshake_timeout,
            dtls_role,
            max_channels,
        )
    }

    pub(crate) fn get_srtp_handler(&mut self) -> SrtpHandler<'_> {
        SrtpHandler::new(&mut self.pipeline_context.srtp_handler_context)
    }

    pub(crate) fn get_interceptor_handler(&mut self) -> InterceptorHandler<'_> {
        InterceptorHandler::new(
            &mut self.pipeline_context.interceptor_handler_context,
            &mut self.rtp_transceivers,
            &self.media_engine,
            &mut self.interceptor,
            &mut self.pipeline_context.stats,
        )
    }

    pub(crate) fn get_endpoint_handler(&mut self) -> EndpointHandler<'_> {
        EndpointHandler::new(
            &mut self.pipeline_context.endpoint_handler_context,
            &mut self.rtp_transceivers,
            &mut self.pipeline_context.stats,
        )
    }

    /// Writes one RTP packet of the application through the handlers that act on it:
    /// interceptors, SRTP, ICE and the demuxer's statistics. The endpoint, data-channel, SCTP
    /// and DTLS handlers only pass RTP on, so it skips their queues, and it hands each message
    /// straight to the next handler instead of collecting a stage's output first. The datagrams
    /// it produces and every statistic are those of `handle_write` followed by `flush_writes`;
    /// before the DTLS handshake completes it is exactly that path.
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md): each pass through a handler moves the
    /// whole message in and out of a queue, and an SFU writes every forwarded packet once per
    /// subscriber.
    pub(crate) fn write_rtp_direct(
        &mut self,
        now: Instant,
        packet: rtp::Packet,
    ) -> Result<(), Error> {
        use sansio::Protocol;

        self.pipeline_context.observe(now);
        let msg = TaggedRTCMessageInternal {
            now,
            transport: Default::default(),
            message: RTCMessageInternal::Rtp(RTPMessage::Packet(Packet::Rtp(packet))),
        };
        if !self
            .pipeline_context
            .interceptor_handler_context
            .is_dtls_handshake_complete
        {
            return self.get_endpoint_handler().handle_write(msg);
        }
        self.before_direct_write(now);
        self.get_interceptor_handler().handle_write(msg)?;
        while let Some(msg) = self.get_interceptor_handler().poll_write() {
            self.write_past_interceptors(msg);
        }
        Ok(())
    }

    /// Writes one RTP packet past the interceptors: straight to SRTP, ICE and the demuxer.
    /// For an application that itself does what write-side interceptors would (an SFU that
    /// sends its own sender reports and answers NACKs from its own history), so that a
    /// forwarded packet is not moved through the interceptor chain's queues once per
    /// subscriber. Interceptors still see everything else: RTCP written, and all reads.
    ///
    /// The packet is not counted in the outbound statistics: the application counts what it
    /// writes, as it must for its sender reports, and hands the counts to `record_rtp_sent`
    /// (a lookup of the stream's statistics for every packet cost 5 % of an SFU's CPU).
    ///
    /// Fails with `ErrDtlsTransportNotStarted` until the DTLS handshake has completed: there
    /// are no SRTP keys yet.
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md).
    pub fn write_rtp_unintercepted(
        &mut self,
        now: Instant,
        packet: rtp::Packet,
    ) -> Result<(), Error> {
        self.pipeline_context.observe(now);
        if !self
            .pipeline_context
            .interceptor_handler_context
            .is_dtls_handshake_complete
        {
            return Err(Error::ErrDtlsTransportNotStarted);
        }
        self.before_direct_write(now);
        self.write_past_interceptors(TaggedRTCMessageInternal {
            now,
            transport: Default::default(),
            message: RTCMessageInternal::Rtp(RTPMessage::Packet(Packet::Rtp(packet))),
        });
        Ok(())
    }

    /// Hands out a datagram already in the output queue, without running the handlers for
    /// more: what `poll_write` returns while the queue is not empty. For a caller that has
    /// written nothing but `write_rtp_unintercepted` since it last polled `poll_write` until
    /// `None`: those writes leave nothing in the handlers, so the walk of all eight that
    /// `poll_write` makes once the queue is empty would find nothing.
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md).
    pub fn poll_write_queued(&mut self) -> Option<TaggedBytesMut> {
        self.pipeline_context.write_outs.pop_front()
    }

    /// Reads a datagram as `handle_read` does, and returns whether `read_srtp_direct` took it
    /// (SRTP or SRTCP once ICE has a pair, nothing queued before SRTP). If it did, whatever
    /// the read made SRTP, the interceptors and the endpoint produce (messages for the
    /// application, events, datagrams to send) is in the output queues when this returns.
    ///
    /// So a caller that had drained the connection completely before (`poll_read`,
    /// `poll_event` and `poll_write` until `None`, then `poll_timeout`), and has given it
    /// nothing since but datagrams for which this returned `true`, finds everything there is
    /// with `poll_read_queued`, `poll_event_queued` and `poll_write_queued`, and its next
    /// deadline with `poll_timeout_after_srtp_reads`, without walking all eight handlers
    /// four times. After `false`, drain with the walking calls as after `handle_read`.
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    pub fn handle_read_settled(&mut self, msg: TaggedBytesMut) -> Result<bool, Error> {
        let direct = self.read(msg);
        if direct {
            self.settle_after_srtp();
        }
        Ok(direct)
    }

    /// What `handle_read` does: the datagram through `read_srtp_direct` or, if that does not
    /// take it, the whole pipeline. Returns whether `read_srtp_direct` took it.
    ///
    /// Inlined into both callers: as a function of its own (with `read_srtp_direct` inlined
    /// into it instead) it cost the server ~7 % more CPU per packet in rooms of two
    /// (vendor/rtc/SWITCHBOARD.md, patch 9).
    #[inline(always)]
    fn read(&mut self, msg: TaggedBytesMut) -> bool {
        self.pipeline_context.observe(msg.now);
        let msg = TaggedRTCMessageInternal {
            now: msg.now,
            transport: msg.transport,
            message: RTCMessageInternal::Raw(msg.message),
        };
        match self.read_srtp_direct(msg) {
            Some(msg) => {
                self.pump_reads(Some(msg));
                false
            }
            None => {
                self.pump_reads_after_srtp();
                true
            }
        }
    }

    /// Hands out a message already queued for the application, by `poll_read`'s rule,
    /// without walking the handlers for more (see `handle_read_settled`).
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    pub fn poll_read_queued(&mut self) -> Option<TaggedRTCMessage> {
        let context = &mut self.pipeline_context;
        match (context.data_read_outs.front(), context.media_read_outs.front()) {
            (Some(data), Some(media)) if data.now > media.now => context.media_read_outs.pop_front(),
            (Some(_), _) => context.data_read_outs.pop_front(),
            (None, _) => context.media_read_outs.pop_front(),
        }
    }

    /// Hands out an event already queued, without walking the handlers for more (see
    /// `handle_read_settled`).
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    pub fn poll_event_queued(&mut self) -> Option<RTCPeerConnectionEvent> {
        self.pipeline_context.event_outs.pop_front()
    }

    /// The next deadline after reads for which `handle_read_settled` returned `true` (see
    /// there): the earliest of the five handlers before SRTP as the last `poll_timeout` found
    /// it (the direct read moves none of their timers: it only counts in the demuxer and ICE,
    /// and sets the data channels' clock, which no deadline of theirs depends on) and of SRTP,
    /// the interceptors and the endpoint, asked again (an interceptor may set a timer on a
    /// packet, as the transport-wide feedback does on its first).
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    pub fn poll_timeout_after_srtp_reads(&mut self) -> Option<Instant> {
        let mut eto = self.pipeline_context.timeout_before_srtp;
        handlers_from_srtp!(earliest_timeout!(self, eto));
        eto
    }

    /// Adds RTP packets written with `write_rtp_unintercepted` on `ssrc` to the outbound
    /// statistics: `packets` of them, with `header_bytes` and `payload_bytes` in all, the
    /// newest written at `last_sent`. They are counted as the interceptor handler counts what
    /// it lets through (as retransmissions of the primary stream if `ssrc` is an RTX one).
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md).
    pub fn record_rtp_sent(
        &mut self,
        ssrc: SSRC,
        packets: u64,
        header_bytes: u64,
        payload_bytes: u64,
        last_sent: Instant,
    ) {
        self.pipeline_context.stats.on_rtp_packets_sent(
            ssrc,
            packets,
            header_bytes,
            payload_bytes,
            last_sent,
        );
    }

    /// Hands SRTP and SRTCP that arrive once ICE has selected a pair straight to the SRTP
    /// handler, doing on the way what the demuxer, ICE, DTLS, SCTP and data-channel handlers
    /// do with them (the demuxer's and ICE's counts, the data-channel handler's clock); each of
    /// those would queue the ~200-byte message and pass it on unchanged. Returns the message
    /// if it is to take the pipeline's way: anything else, anything before ICE has a pair
    /// (which the ICE handler drops), and everything while one of those handlers still holds
    /// a message it read earlier, which must not be overtaken.
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md).
    fn read_srtp_direct(
        &mut self,
        mut msg: TaggedRTCMessageInternal,
    ) -> Option<TaggedRTCMessageInternal> {
        let context = &mut self.pipeline_context;
        let is_srtp =
            matches!(&msg.message, RTCMessageInternal::Raw(bytes) if demuxer::match_srtp(bytes));
        if !is_srtp
            || !context.demuxer_handler_context.read_outs.is_empty()
            || !context.ice_handler_context.read_outs.is_empty()
            || !context.dtls_handler_context.read_outs.is_empty()
            || !context.sctp_handler_context.read_outs.is_empty()
            || !context.datachannel_handler_context.read_outs.is_empty()
            || context
                .ice_handler_context
                .ice_transport
                .agent
                .get_selected_candidate_pair()
                .is_none()
        {
            return Some(msg);
        }
        context
            .stats
            .transport
            .on_packet_received(msg.message.len());
        context.ice_handler_context.pass_read(&mut msg);
        context.datachannel_handler_context.observe(msg.now);
        msg.message = match msg.message {
            RTCMessageInternal::Raw(bytes) => RTCMessageInternal::Rtp(RTPMessage::Raw(bytes)),
            other => other,
        };
        if let Err(err) = sansio::Protocol::handle_read(&mut self.get_srtp_handler(), msg) {
            warn!("SrtpHandler.handle_read got error: {}", err);
        }
        None
    }

    /// What a direct write does first: let out whatever a handler between DTLS and the wire
    /// already holds, and record the write's instant as the skipped data-channel handler does.
    ///
    /// The DTLS handler may still hold the last flight of the handshake, and SRTP that
    /// overtook it would reach a peer without its keys yet. Only the DTLS, ICE and demuxer
    /// queues are checked (a full `flush_writes` walks all eight handlers and the interceptor
    /// chain, and cost 3–4 % of an SFU's CPU when run before every write): what the handlers
    /// above DTLS hold (RTCP, SCTP) is independent of SRTP and may leave after it.
    fn before_direct_write(&mut self, now: Instant) {
        let context = &self.pipeline_context;
        if !context.dtls_handler_context.write_outs.is_empty()
            || context.dtls_handler_context.close_requested.is_some()
            || !context.ice_handler_context.write_outs.is_empty()
            || !context.demuxer_handler_context.write_outs.is_empty()
        {
            self.flush_writes();
        }
        self.pipeline_context
            .datachannel_handler_context
            .observe(now);
    }

    /// SRTP, ICE and the demuxer for one message the interceptors let out; the datagram waits
    /// in `write_outs` for `poll_write`.
    fn write_past_interceptors(&mut self, msg: TaggedRTCMessageInternal) {
        let msg = match self.get_srtp_handler().encrypt(msg) {
            Ok(msg) => msg,
            Err(err) => {
                warn!("SrtpHandler.handle_write got error: {}", err);
                return;
            }
        };
        let Some(msg) = self.get_ice_handler().route(msg) else {
            return;
        };
        if let Some(TaggedRTCMessageInternal {
            now,
            transport,
            message: RTCMessageInternal::Raw(message),
        }) = self.get_demuxer_handler().to_raw(msg)
        {
            self.pipeline_context.write_outs.push_back(TaggedBytesMut {
                now,
                transport,
                message,
            });
        }
    }

    /// Runs every handler's pending writes down the pipeline into `write_outs`, where
    /// [`poll_write`](sansio::Protocol::poll_write) hands them out.
    fn flush_writes(&mut self) {
        let mut intermediate_wouts = VecDeque::new();
        reverse_handlers!(walk_writes!(self, intermediate_wouts));
        self.deliver_writes(intermediate_wouts);
    }

    /// `flush_writes` after reads that `read_srtp_direct` took, for a caller that had drained
    /// the connection before them: only the endpoint, the interceptors and SRTP can hold
    /// anything new, so the handlers below SRTP are walked only for what those let out
    /// (their own queues were emptied by the last full flush, and nothing has reached them
    /// since).
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    fn flush_writes_after_srtp(&mut self) {
        let mut intermediate_wouts = VecDeque::new();
        walk_writes!(
            self,
            intermediate_wouts,
            [
                get_endpoint_handler,
                get_interceptor_handler,
                get_srtp_handler
            ]
        );
        if intermediate_wouts.is_empty() {
            return;
        }
        walk_writes!(
            self,
            intermediate_wouts,
            [
                get_datachannel_handler,
                get_sctp_handler,
                get_dtls_handler,
                get_ice_handler,
                get_demuxer_handler
            ]
        );
        self.deliver_writes(intermediate_wouts);
    }

    /// Moves what came out of the last handler (the demuxer) into the output queue.
    fn deliver_writes(&mut self, mut intermediate_wouts: VecDeque<TaggedRTCMessageInternal>) {
        while let Some(msg) = intermediate_wouts.pop_front() {
            if let RTCMessageInternal::Raw(message) = msg.message {
                self.pipeline_context.write_outs.push_back(TaggedBytesMut {
                    now: msg.now,
                    transport: msg.transport,
                    message,
                });
            }
        }
    }

    fn pump_reads(&mut self, msg: Option<TaggedRTCMessageInternal>) {
        let mut intermediate_routs = VecDeque::<TaggedRTCMessageInternal>::new();

        if let Some(msg) = msg {
            intermediate_routs.push_back(msg);
        }

        forward_handlers!(walk_reads!(self, intermediate_routs));

        self.deliver_reads(intermediate_routs);
    }

    /// `pump_reads` after `read_srtp_direct` took a packet: it waits in the SRTP handler, and
    /// the five handlers before SRTP had nothing queued (`read_srtp_direct` checks), so only
    /// SRTP, the interceptors and the endpoint are walked. Anything the five produced since
    /// (nothing does on a read) is pumped by the next `poll_read` that finds the output
    /// queues empty.
    ///
    /// Switchboard patch (vendor/rtc/SWITCHBOARD.md).
    fn pump_reads_after_srtp(&mut self) {
        let mut intermediate_routs = VecDeque::<TaggedRTCMessageInternal>::new();

        handlers_from_srtp!(walk_reads!(self, intermediate_routs));

        self.deliver_reads(intermediate_routs);
    }

    /// Moves what came out of the last handler into the application's output queues.
    fn deliver_reads(&mut self, mut intermediate_routs: VecDeque<TaggedRTCMessageInternal>) {
        while let Some(msg) = intermediate_routs.pop_front() {
            let rtc_message = match msg.message {
                RTCMessageInternal::Dtls(DTLSMessage::DataChannel(application_message)) => {
                    if let DataChannelEvent::Message(data_channel_message) =
                        application_message.data_channel_event
                    {
                        Some(RTCMessage::DataChannelMessage(
                            application_message.data_channel_id,
                            data_channel_message,
                        ))
                    } else {
                        None
                    }
                }
                RTCMessageInternal::Rtp(RTPMessage::TrackPacket(track_packet)) => {
                    match track_packet.packet {
                        Packet::Rtp(packet) => {
                            Some(RTCMessage::RtpPacket(track_packet.track_id, packet))
                        }
                        Packet::Rtcp(packet) => {
                            Some(RTCMessage::RtcpPacket(track_packet.track_id, packet))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };

            if let Some(rtc_message) = rtc_message {
                // The instant travels with the message: the application learns when the packet
                // was observed at the socket, not when it happened to drain it.
                let tagged = TaggedRTCMessage {
                    now: msg.now,
                    message: rtc_message,
                };
                // Routed by kind, so a caller can decline data-channel output — the only way
                // to apply SCTP back-pressure — without also declining media.
                match &tagged.message {
                    RTCMessage::DataChannelMessage(..) => {
                        self.pipeline_context.data_read_outs.push_back(tagged)
                    }
                    _ => self.pipeline_context.media_read_outs.push_back(tagged),
                }
            }
        }
    }

    /// Returns whether any handler raised an event during the sweep.
    fn pump_events(&mut self) -> bool {
        let mut intermediate_eouts = VecDeque::new();
        let mut raised = false;
        forward_handlers!(walk_events!(self, intermediate_eouts, raised));
        self.deliver_events(intermediate_eouts);
        raised
    }

    /// `pump_events` over the handlers a read that `read_srtp_direct` took reached: SRTP, the
    /// interceptors and the endpoint. An event one of them raises is handled only by the
    /// handlers after it, so these three are all a sweep would involve.
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    fn pump_events_after_srtp(&mut self) -> bool {
        let mut intermediate_eouts = VecDeque::new();
        let mut raised = false;
        handlers_from_srtp!(walk_events!(self, intermediate_eouts, raised));
        self.deliver_events(intermediate_eouts);
        raised
    }

    /// Acts on what came out of the last handler (connection state) and queues the
    /// application's events.
    fn deliver_events(&mut self, mut intermediate_eouts: VecDeque<TaggedRTCEventInternal>) {
        while let Some(evt_internal) = intermediate_eouts.pop_front() {
            match &evt_internal.event {
                RTCEventInternal::RTCPeerConnectionEvent(
                    RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(_),
                )
                | RTCEventInternal::DTLSHandshakeComplete(_, _)
                | RTCEventInternal::DTLSClosed => {
                    self.update_connection_state(false);
                }
                _ => {}
            };

            if let RTCEventInternal::RTCPeerConnectionEvent(evt) = evt_internal.event {
                self.pipeline_context.event_outs.push_back(evt);
            }
        }
    }

    /// After a read that `read_srtp_direct` took and `pump_reads_after_srtp` moved on: moves
    /// what SRTP, the interceptors and the endpoint raised or wrote in response to the output
    /// queues, as `poll_event` and `poll_write` would (events first, and the reads that
    /// handling them queues, as in `poll_event`).
    ///
    /// Switchboard patch 9 (vendor/rtc/SWITCHBOARD.md).
    fn settle_after_srtp(&mut self) {
        if self.pump_events_after_srtp() {
            self.pump_reads_after_srtp();
            self.pump_events_after_srtp();
        }
        self.flush_writes_after_srtp();
    }
}

impl sansio::Protocol<TaggedBytesMut, TaggedRTCMessage, TaggedRTCEvent> for RTCPeerConnection {
    type Rout = TaggedRTCMessage;
    type Wout = TaggedBytesMut;
    type Eout = RTCPeerConnectionEvent;
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedBytesMut) -> Result<(), Self::Error> {
        self.read(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        // What is queued already goes out before anything a pump would add behind it, so the
        // handlers are walked only once both queues are empty (Switchboard patch,
        // vendor/rtc/SWITCHBOARD.md): not once more for every message handed out.
        if self.pipeline_context.media_read_outs.is_empty()
            && self.pipeline_context.data_read_outs.is_empty()
        {
            self.pump_reads(None);
        }

        self.poll_read_queued()
    }

    fn handle_write(&mut self, msg: TaggedRTCMessage) -> Result<(), Self::Error> {
        let now = msg.now;
        self.pipeline_context.observe(now);
        let rtc_message_internal = match msg.message {
            RTCMessage::DataChannelMessage(data_channel_id, data_channel_message) => {
                RTCMessageInternal::Dtls(DTLSMessage::DataChannel(ApplicationMessage {
                    data_channel_id,
                    data_channel_event: DataChannelEvent::Message(data_channel_message),
                }))
            }
            RTCMessage::RtpPacket(_track_id, rtp_packet) => {
                // Switchboard patch (vendor/rtc/SWITCHBOARD.md).
                return self.write_rtp_direct(now, rtp_packet);
            }
            RTCMessage::RtcpPacket(_track_id, rtcp_packet) => {
                RTCMessageInternal::Rtp(RTPMessage::Packet(Packet::Rtcp(rtcp_packet)))
            }
        };

        // Only endpoint can handle user write message
        let mut endpoint_handler = self.get_endpoint_handler();
        endpoint_handler.handle_write(TaggedRTCMessageInternal {
            now,
            transport: Default::default(),
            message: rtc_message_internal,
        })
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        // What is queued already leaves before anything a flush would add behind it, so the
        // handlers are walked only once the queue is empty (Switchboard patch,
        // vendor/rtc/SWITCHBOARD.md): not once more for every datagram handed out.
        if let Some(msg) = self.pipeline_context.write_outs.pop_front() {
            return Some(msg);
        }
        self.flush_writes();
        self.pipeline_context.write_outs.pop_front()
    }

    fn handle_event(&mut self, evt: TaggedRTCEvent) -> Result<(), Self::Error> {
        // `RTCEvent` is `pub enum RTCEvent {}` — uninhabited, reserved for future use — so no
        // caller can construct one and this arm is unreachable. Diverging on the empty match
        // keeps that fact in the type system, and avoids inventing an instant to wrap the
        // event with when there is none to be had. C3-03 replaces this with `evt.now` once
        // the public channel carries a timestamp.
        match evt.event {}
    }

    fn poll_event(&mut self) -> Option<Self::Eout> {
        // Drain the backlog before sweeping the pipeline again: anything a sweep adds lands
        // behind it anyway, and the sweep runs once the backlog is empty.
        if let Some(evt) = self.pipeline_context.event_outs.pop_front() {
            return Some(evt);
        }

        // Handling an event can queue read messages, like the open of a negotiated data channel
        // on `SCTPHandshakeComplete`. Deliver them, and the events they raise, now rather than
        // on the next incoming packet.
        if self.pump_events() {
            self.pump_reads(None);
            self.pump_events();
        }

        self.pipeline_context.event_outs.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.pipeline_context.observe(now);
        for_each_handler!(forward: process_handler!(self, handler, {
            handler.handle_timeout(now)?;
        }));
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        // The five handlers before SRTP first, kept for `poll_timeout_after_srtp_reads`, which
        // adds the other three (Switchboard patch 9, vendor/rtc/SWITCHBOARD.md).
        let mut eto: Option<Instant> = None;
        earliest_timeout!(
            self,
            eto,
            [
                get_demuxer_handler,
                get_ice_handler,
                get_dtls_handler,
                get_sctp_handler,
                get_datachannel_handler
            ]
        );
        self.pipeline_context.timeout_before_srtp = eto;
        self.poll_timeout_after_srtp_reads()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #1)
        if self.peer_connection_state == RTCPeerConnectionState::Closed {
            return Ok(());
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #3)
        self.signaling_state = RTCSignalingState::Closed;

        // Tell the peer before tearing anything down, so it can close at once instead of waiting
        // for its ICE consent checks to time out (rtc#255). During this flush the SCTP handler
        // sends the data it still holds and then an ABORT for each association (W3C close():
        // "tear down the underlying SCTP association by sending an SCTP ABORT chunk"), and the
        // DTLS handler queues a close_notify behind them, so nothing pending is dropped or sent
        // after it. They are routed now because closing the ICE handler below forgets the
        // selected candidate pair every outbound packet is addressed with; the packets wait in
        // `write_outs` for the caller's next `poll_write`.
        let now = self.pipeline_context.now;
        self.get_sctp_handler().request_abort();
        self.get_dtls_handler().request_close(now);
        self.flush_writes();

        // Try closing everything and collect the errors
        // Shutdown strategy:
        // 1. All Conn close by closing their underlying Conn.
        // 2. A Mux stops this chain. It won't close the underlying
        //    Conn if one of the endpoints is closed down. To
        //    continue the chain the Mux has to be closed.
        for_each_handler!(forward: process_handler!(self, handler, {
            handler.close()?;
        }));

        let close_errs: Vec<Error> = vec![];

        /* TODO:
        if let Err(err) = self.interceptor.close().await {
            close_errs.push(Error::new(format!("interceptor: {err}")));
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #4)
        {
            let mut rtp_transceivers = self.internal.rtp_transceivers.lock().await;
            for t in &*rtp_transceivers {
                if let Err(err) = t.stop().await {
                    close_errs.push(Error::new(format!("rtp_transceivers: {err}")));
                }
            }
            rtp_transceivers.clear();
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #5)
        {
            let mut data_channels = self.internal.sctp_transport.data_channels.lock().await;
            for d in &*data_channels {
                if let Err(err) = d.close().await {
                    close_errs.push(Error::new(format!("data_channels: {err}")));
                }
            }
            data_channels.clear();
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #6)
        if let Err(err) = self.internal.sctp_transport.stop().await {
            close_errs.push(Error::new(format!("sctp_transport: {err}")));
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #7)
        if let Err(err) = self.internal.dtls_transport.stop().await {
            close_errs.push(Error::new(format!("dtls_transport: {err}")));
        }

        // https://www.w3.org/TR/webrtc/#dom-rtcpeerconnection-close (step #8, #9, #10)
        if let Err(err) = self.internal.ice_transport.stop().await {
            close_errs.push(Error::new(format!("ice_transport: {err}")));
        }
         */

        self.update_connection_state(true);

        flatten_errs(close_errs)
    }
}

#[cfg(test)]
mod handler_test {
    use super::*;
    use crate::data_channel::message::RTCDataChannelMessage;
    use crate::peer_connection::RTCPeerConnectionBuilder;
    use crate::peer_connection::event::RTCDataChannelEvent;
    use bytes::BytesMut;
    use sansio::Protocol;
    use shared::{TransportContext, TransportProtocol};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// Media must be drainable while data-channel output is held back.
    ///
    /// That is the whole point of the split: back-pressure is applied by declining to drain
    /// the data-channel queue, and while both kinds shared one queue that also stopped media.
    /// A slow signalling channel froze video on the same connection for as long as it stalled.
    #[test]
    fn media_drains_while_data_channel_output_is_held_back() {
        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");

        // Media outnumbering data, the shape of a real SFU connection.
        for i in 0..10 {
            let message = if i % 5 == 0 {
                RTCMessage::DataChannelMessage(0, RTCDataChannelMessage::default())
            } else {
                RTCMessage::RtpPacket(Default::default(), ::rtp::packet::Packet::default())
            };
            let tagged = TaggedRTCMessage { now: base, message };
            match tagged.message {
                RTCMessage::DataChannelMessage(..) => {
                    pc.pipeline_context.data_read_outs.push_back(tagged)
                }
                _ => pc.pipeline_context.media_read_outs.push_back(tagged),
            }
        }

        // Drain media only — as a caller applying data-channel back-pressure would.
        let mut media = 0;
        while let Some(msg) = pc.poll_media_read() {
            assert!(
                !matches!(msg.message, RTCMessage::DataChannelMessage(..)),
                "poll_media_read must never yield data-channel output"
            );
            media += 1;
        }

        assert_eq!(
            media, 8,
            "all media must be deliverable while data is held back"
        );
        assert_eq!(
            pc.pipeline_context.data_read_outs.len(),
            2,
            "held-back data-channel output must stay queued — its length is the signal the \
             SCTP drain is bounded against, so losing it would drop the back-pressure"
        );

        // And releasing it hands over exactly what was held.
        let mut data = 0;
        while let Some(msg) = pc.poll_data_read() {
            assert!(matches!(msg.message, RTCMessage::DataChannelMessage(..)));
            data += 1;
        }
        assert_eq!(data, 2);
    }

    /// `poll_read` still yields both kinds, so the callers that predate the split — 58 files
    /// across tests and examples — behave exactly as before.
    #[test]
    fn poll_read_still_yields_both_kinds() {
        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");

        pc.pipeline_context
            .data_read_outs
            .push_back(TaggedRTCMessage {
                now: base,
                message: RTCMessage::DataChannelMessage(0, RTCDataChannelMessage::default()),
            });
        pc.pipeline_context
            .media_read_outs
            .push_back(TaggedRTCMessage {
                now: base,
                message: RTCMessage::RtpPacket(
                    Default::default(),
                    ::rtp::packet::Packet::default(),
                ),
            });

        let mut kinds = vec![];
        while let Some(msg) = pc.poll_read() {
            kinds.push(matches!(msg.message, RTCMessage::DataChannelMessage(..)));
        }
        assert_eq!(kinds.len(), 2, "poll_read must still drain everything");
        assert!(kinds.contains(&true) && kinds.contains(&false));
    }

    /// `poll_read` hands out what is queued for the application before it walks the handlers,
    /// and walks them once the queues are empty: a message still waiting in a handler comes
    /// out after the queued ones, and nothing is left behind (Switchboard patch 8).
    #[test]
    fn poll_read_hands_out_the_queue_before_pumping_the_handlers() {
        let base = Instant::now();
        let t = |millis| base + Duration::from_millis(millis);
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");
        let rtp = |seq: u16| {
            let mut packet = ::rtp::packet::Packet::default();
            packet.header.sequence_number = seq;
            packet
        };
        for seq in [1, 2] {
            pc.pipeline_context
                .media_read_outs
                .push_back(TaggedRTCMessage {
                    now: t(u64::from(seq)),
                    message: RTCMessage::RtpPacket(Default::default(), rtp(seq)),
                });
        }
        // A later packet the endpoint handler has read but not yet handed on.
        pc.pipeline_context
            .endpoint_handler_context
            .read_outs
            .push_back(TaggedRTCMessageInternal {
                now: t(3),
                transport: TransportContext::default(),
                message: RTCMessageInternal::Rtp(RTPMessage::TrackPacket(
                    crate::peer_connection::message::internal::TrackPacket {
                        track_id: Default::default(),
                        packet: Packet::Rtp(rtp(3)),
                    },
                )),
            });

        let mut order = vec![];
        while let Some(msg) = pc.poll_read() {
            let RTCMessage::RtpPacket(_, packet) = msg.message else {
                panic!("only RTP was queued");
            };
            order.push(packet.header.sequence_number);
            if order.len() == 1 {
                assert_eq!(
                    pc.pipeline_context.endpoint_handler_context.read_outs.len(),
                    1,
                    "a queued message goes out without a walk of the handlers"
                );
            }
        }
        assert_eq!(
            order,
            vec![1, 2, 3],
            "queued first, then what the walk found"
        );
        assert!(
            pc.pipeline_context
                .endpoint_handler_context
                .read_outs
                .is_empty()
        );
    }

    /// What a read taken by `read_srtp_direct` made SRTP, the interceptors and the endpoint
    /// produce is in the output queues once `handle_read_settled` returns, so the calls that do
    /// not walk the handlers find it; a handler before SRTP is not walked (it holds nothing for
    /// a caller that drained before), and what it does hold is still found by the walking
    /// calls (Switchboard patch 9).
    #[test]
    fn a_settled_read_queues_what_the_handlers_from_srtp_on_produced() {
        use crate::peer_connection::message::internal::TrackPacket;
        use crate::peer_connection::state::signaling_state::RTCSignalingState;

        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");
        while pc.poll_event().is_some() {}
        let event = |event| TaggedRTCEventInternal {
            now: base,
            event: RTCEventInternal::RTCPeerConnectionEvent(event),
        };
        // Raised by the interceptor handler on the read, as `OnTrack` is on a stream's first
        // packet, and a packet the endpoint handler read.
        pc.pipeline_context
            .interceptor_handler_context
            .event_outs
            .push_back(event(RTCPeerConnectionEvent::OnNegotiationNeededEvent));
        let mut packet = ::rtp::packet::Packet::default();
        packet.header.sequence_number = 7;
        pc.pipeline_context
            .endpoint_handler_context
            .read_outs
            .push_back(TaggedRTCMessageInternal {
                now: base,
                transport: TransportContext::default(),
                message: RTCMessageInternal::Rtp(RTPMessage::TrackPacket(TrackPacket {
                    track_id: Default::default(),
                    packet: Packet::Rtp(packet),
                })),
            });
        // Held by a handler the direct read does not reach.
        pc.pipeline_context
            .dtls_handler_context
            .event_outs
            .push_back(event(RTCPeerConnectionEvent::OnSignalingStateChangeEvent(
                RTCSignalingState::Stable,
            )));

        // What `handle_read_settled` does once `read_srtp_direct` took the datagram.
        pc.pump_reads_after_srtp();
        pc.settle_after_srtp();

        let Some(TaggedRTCMessage {
            message: RTCMessage::RtpPacket(_, read),
            ..
        }) = pc.poll_read_queued()
        else {
            panic!("the endpoint's packet is queued");
        };
        assert_eq!(read.header.sequence_number, 7);
        assert!(pc.poll_read_queued().is_none());
        assert!(matches!(
            pc.poll_event_queued(),
            Some(RTCPeerConnectionEvent::OnNegotiationNeededEvent)
        ));
        assert!(pc.poll_event_queued().is_none());
        assert_eq!(
            pc.pipeline_context.dtls_handler_context.event_outs.len(),
            1,
            "the handlers before SRTP are not walked"
        );
        assert!(matches!(
            pc.poll_event(),
            Some(RTCPeerConnectionEvent::OnSignalingStateChangeEvent(_))
        ));
    }

    /// `poll_timeout_after_srtp_reads` is `poll_timeout` with the five handlers before SRTP
    /// as the last `poll_timeout` found them: a deadline of theirs counts, and one set since in
    /// SRTP, the interceptors or the endpoint is asked for (Switchboard patch 9).
    #[test]
    fn the_deadline_after_settled_reads_keeps_the_handlers_before_srtp() {
        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");
        let full = pc.poll_timeout();
        assert_eq!(pc.poll_timeout_after_srtp_reads(), full);
        // As if a handler before SRTP had had a deadline when `poll_timeout` last asked.
        let earlier = base + Duration::from_millis(1);
        pc.pipeline_context.timeout_before_srtp = Some(earlier);
        assert_eq!(pc.poll_timeout_after_srtp_reads(), Some(earlier));
    }

    /// The instant the application supplies on `handle_write` is the one the core stamps the
    /// resulting internal message with — not a reading the core took for itself. Before C3-03
    /// the public `Win` was a bare `RTCMessage`, so this entry point had no time source and
    /// stamped `Instant::now()`.
    #[test]
    fn handle_write_stamps_from_the_caller_not_the_clock() {
        let base = Instant::now();
        let t = |secs| base + Duration::from_secs(secs);

        let mut pc = RTCPeerConnectionBuilder::new()
            .build(t(0))
            .expect("a default peer connection builds");

        pc.handle_write(TaggedRTCMessage {
            now: t(5),
            message: RTCMessage::DataChannelMessage(
                1,
                RTCDataChannelMessage {
                    is_string: true,
                    data: BytesMut::from(&b"hello"[..]),
                },
            ),
        })
        .expect("handle_write queues the message");

        let queued = pc
            .pipeline_context
            .endpoint_handler_context
            .write_outs
            .front()
            .expect("the message reaches the endpoint handler");

        assert_eq!(
            queued.now,
            t(5),
            "the internal message carries the caller's instant, not an ambient reading"
        );
        assert_ne!(queued.now, t(0), "and not the construction instant either");
    }

    /// The open of a negotiated data channel is queued as a read message while
    /// `SCTPHandshakeComplete` is being handled, i.e. inside `poll_event`. That same `poll_event`
    /// call must return the `OnOpen`: the async `webrtc` driver drains events until `poll_event`
    /// returns `None` and then waits for the next packet or timer.
    #[test]
    fn negotiated_channel_opens_within_the_same_poll_event() {
        use crate::data_channel::RTCDataChannelInit;
        use crate::peer_connection::event::TaggedRTCEventInternal;
        use crate::peer_connection::transport::RTCDtlsRole;

        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("a default peer connection builds");
        let id = pc
            .create_data_channel(
                "negotiated",
                Some(RTCDataChannelInit {
                    negotiated: Some(1),
                    ..Default::default()
                }),
            )
            .expect("a negotiated data channel is created")
            .id();

        // Drain what creating the channel raised (`OnNegotiationNeeded`): an unrelated event
        // returned alongside would keep the loop below polling and hide a stuck open.
        while pc.poll_event().is_some() {}

        // Resolved by the DTLS handshake, which precedes the association.
        pc.dtls_transport_mut().dtls_role = RTCDtlsRole::Client;

        // What the SCTP handler emits once the association is up.
        pc.pipeline_context
            .sctp_handler_context
            .event_outs
            .push_back(TaggedRTCEventInternal {
                now: base,
                event: RTCEventInternal::SCTPHandshakeComplete(0),
            });

        let mut opened = false;
        while let Some(event) = pc.poll_event() {
            if matches!(
                event,
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(opened_id)) if opened_id == id
            ) {
                opened = true;
            }
        }
        assert!(
            opened,
            "the open must not wait for the next incoming packet"
        );
    }

    /// Check that messages in the `read_out` queues don't get stuck until the next incoming packet triggers `handle_read`.
    #[test]
    fn pump_read_outs() {
        let base = Instant::now();
        let t = |secs| base + Duration::from_secs(secs);

        let mut pc = RTCPeerConnectionBuilder::new()
            .build(t(0))
            .expect("a default peer connection builds");

        // drop a message into the data channel handler read outs, like DataChannel::emit_data_channel_opened() does
        pc.pipeline_context
            .datachannel_handler_context
            .read_outs
            .push_back(TaggedRTCMessageInternal {
                now: t(5),
                transport: TransportContext {
                    local_addr: (Ipv4Addr::LOCALHOST, 0).into(),
                    peer_addr: (Ipv4Addr::LOCALHOST, 0).into(),
                    transport_protocol: TransportProtocol::UDP,
                    ecn: None,
                },
                message: RTCMessageInternal::Dtls(DTLSMessage::DataChannel(ApplicationMessage {
                    data_channel_id: 42,
                    data_channel_event: DataChannelEvent::Open,
                })),
            });

        // call `poll_read` to pump the read outs
        let msg = pc.poll_read();
        assert!(
            msg.is_none(),
            "The message should be consumed by the enpoint handler"
        );

        // we should get a channel opened event
        let event = pc.poll_event().expect("should have an event");
        assert!(matches!(
            event,
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(42))
        ));
    }

    /// Switchboard patches 4 and 5: `poll_write` hands out what is queued, in order, before it
    /// walks the handlers, and `poll_write_queued` hands out only what is queued.
    #[test]
    fn queued_datagrams_leave_in_order_with_or_without_a_walk_of_the_handlers() {
        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");
        for byte in [1u8, 2, 3] {
            pc.pipeline_context.write_outs.push_back(TaggedBytesMut {
                now: base,
                transport: TransportContext::default(),
                message: BytesMut::from(&[byte][..]),
            });
        }
        let first = pc.poll_write().expect("queued");
        let second = pc.poll_write_queued().expect("queued");
        let third = pc.poll_write().expect("queued");
        assert_eq!(
            [&first.message[..], &second.message[..], &third.message[..]],
            [[1], [2], [3]]
        );
        assert!(pc.poll_write_queued().is_none());
        assert!(pc.poll_write().is_none());
    }
}
