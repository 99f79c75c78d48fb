use crate::peer_connection::event::RTCPeerConnectionEvent;
use crate::peer_connection::event::{RTCEventInternal, TaggedRTCEventInternal};
use crate::peer_connection::message::internal::{
    RTCMessageInternal, STUNMessage, TaggedRTCMessageInternal,
};
use crate::peer_connection::transport::ice::IceTransport;
use crate::statistics::accumulator::RTCStatsAccumulator;
use crate::statistics::stats::ice_candidate_pair::RTCStatsIceCandidatePairState;
use log::{debug, trace};
use shared::error::{Error, Result};
use shared::{TransportContext, TransportMessage};
use std::collections::VecDeque;
use std::time::Instant;

pub(crate) struct IceHandlerContext {
    pub(crate) ice_transport: IceTransport,

    pub(crate) read_outs: VecDeque<TaggedRTCMessageInternal>,
    pub(crate) write_outs: VecDeque<TaggedRTCMessageInternal>,
    pub(crate) event_outs: VecDeque<TaggedRTCEventInternal>,

    /// Cached stats key of the currently selected ICE candidate pair
    /// (`RTCIceCandidatePair_<local>_<remote>`), refreshed only when the selected
    /// pair changes. The per-packet read/write path looks the pair's stats
    /// accumulator up with this key instead of re-`format!`ing it on every packet
    /// — that formatting was a heap allocation on the hot path in both directions.
    pub(crate) selected_pair_key: Option<String>,

    /// Packets through the selected pair that its statistics do not count yet (Switchboard
    /// patch, vendor/rtc/SWITCHBOARD.md): the per-packet path adds them up here, and
    /// `record_pair_traffic` adds them to the pair's accumulator when statistics are read or
    /// the selected pair changes. Looking the accumulator up by its key (a SipHash of a
    /// ~50-byte string and a string compare) for every packet was a tenth of an SFU's
    /// per-packet CPU time outside the kernel.
    pub(crate) unrecorded: PairTraffic,
}

/// Packets and bytes through a candidate pair, and when the newest went each way.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PairTraffic {
    packets_sent: u64,
    bytes_sent: u64,
    last_sent: Option<Instant>,
    packets_received: u64,
    bytes_received: u64,
    last_received: Option<Instant>,
}

impl IceHandlerContext {
    /// What the handler does to a datagram that is not STUN once a pair is selected, before
    /// passing it on: counts it on the selected pair, and drops its addresses.
    pub(crate) fn pass_read(&mut self, msg: &mut TaggedRTCMessageInternal) {
        // Track packets/bytes received on the selected candidate pair, counted here and added
        // to its accumulator by `record_pair_traffic`.
        let traffic = &mut self.unrecorded;
        traffic.packets_received += 1;
        traffic.bytes_received += msg.message.len() as u64;
        traffic.last_received = Some(msg.now);

        // When ICE restarts and the selected candidate pair changes,
        // WebRTC treats this as a path migration, and DTLS continues unchanged, bound to the ICE transport, not to a fixed 5-tuple.
        // Use default for transport to make DTLS tunneled
        msg.transport = TransportContext::default();
    }

    /// Adds the traffic counted since the last call to the selected pair's statistics.
    pub(crate) fn record_pair_traffic(&mut self, stats: &mut RTCStatsAccumulator) {
        let traffic = std::mem::take(&mut self.unrecorded);
        let Some(pair) = self
            .selected_pair_key
            .as_ref()
            .and_then(|key| stats.ice_candidate_pairs.get_mut(key))
        else {
            return;
        };
        pair.packets_sent += traffic.packets_sent;
        pair.bytes_sent += traffic.bytes_sent;
        if traffic.last_sent.is_some() {
            pair.last_packet_sent_timestamp = traffic.last_sent;
        }
        pair.packets_received += traffic.packets_received;
        pair.bytes_received += traffic.bytes_received;
        if traffic.last_received.is_some() {
            pair.last_packet_received_timestamp = traffic.last_received;
        }
    }

    pub(crate) fn new(ice_transport: IceTransport) -> Self {
        Self {
            ice_transport,

            read_outs: VecDeque::new(),
            write_outs: VecDeque::new(),
            event_outs: VecDeque::new(),

            selected_pair_key: None,
            unrecorded: PairTraffic::default(),
        }
    }
}

/// IceHandler implements ICE Protocol handling
pub(crate) struct IceHandler<'a> {
    ctx: &'a mut IceHandlerContext,
    stats: &'a mut RTCStatsAccumulator,
}

impl<'a> IceHandler<'a> {
    pub(crate) fn new(ctx: &'a mut IceHandlerContext, stats: &'a mut RTCStatsAccumulator) -> Self {
        IceHandler { ctx, stats }
    }

    pub(crate) fn name(&self) -> &'static str {
        "IceHandler"
    }
}

impl<'a>
    sansio::Protocol<TaggedRTCMessageInternal, TaggedRTCMessageInternal, TaggedRTCEventInternal>
    for IceHandler<'a>
{
    type Rout = TaggedRTCMessageInternal;
    type Wout = TaggedRTCMessageInternal;
    type Eout = TaggedRTCEventInternal;
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedRTCMessageInternal) -> Result<()> {
        if let RTCMessageInternal::Stun(STUNMessage::Raw(message)) = msg.message {
            self.ctx.ice_transport.agent.handle_read(TransportMessage {
                now: msg.now,
                transport: msg.transport,
                message,
            })?;
        } else if self
            .ctx
            .ice_transport
            .agent
            .get_selected_candidate_pair()
            .is_some()
        {
            // only ICE connection is ready and bypass it
            debug!("bypass ice read {:?}", msg.transport.peer_addr);

            self.ctx.pass_read(&mut msg);
            self.ctx.read_outs.push_back(msg);
        } else {
            trace!(
                "drop message from {:?} to {:?} before ICE connection is connected",
                msg.transport.peer_addr, msg.transport.local_addr
            );
        }

        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.ctx.read_outs.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedRTCMessageInternal) -> Result<()> {
        if let Some(msg) = self.route(msg) {
            self.ctx.write_outs.push_back(msg);
        }
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        while let Some(transmit) = self.ctx.ice_transport.agent.poll_write() {
            self.ctx.write_outs.push_back(TaggedRTCMessageInternal {
                now: transmit.now,
                transport: transmit.transport,
                message: RTCMessageInternal::Stun(STUNMessage::Raw(transmit.message)),
            });
        }

        self.ctx.write_outs.pop_front()
    }

    fn handle_event(&mut self, evt: TaggedRTCEventInternal) -> Result<()> {
        self.ctx.event_outs.push_back(evt);
        Ok(())
    }

    fn poll_event(&mut self) -> Option<Self::Eout> {
        if let Some(evt) = self.ctx.ice_transport.agent.poll_event() {
            // The agent stamps its own events, so this drain *propagates* that instant rather
            // than retaining one: the condition was observed when the agent saw it, not when
            // the pipeline got round to polling for it.
            let now = evt.now;
            match evt.event {
                ::ice::Event::ConnectionStateChange(state) => {
                    let ice_connection_state = state.into();
                    self.ctx.ice_transport.ice_connection_state = ice_connection_state;

                    // Update transport stats for ICE state change
                    // Use the original ice state which converts to RTCIceTransportState
                    self.stats.transport.on_ice_state_changed(state.into());

                    self.ctx.event_outs.push_back(TaggedRTCEventInternal {
                        now,
                        event: RTCEventInternal::RTCPeerConnectionEvent(
                            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                                ice_connection_state,
                            ),
                        ),
                    });
                }
                ::ice::Event::SelectedCandidatePairChange(local, remote) => {
                    debug!(
                        "ice selected candidate pair {:?} <-> {:?}",
                        local.addr(),
                        remote.addr()
                    );

                    // What the previous pair carried is its own.
                    self.ctx.record_pair_traffic(self.stats);

                    // Create/update the candidate pair accumulator
                    let pair = self
                        .stats
                        .get_or_create_candidate_pair(local.id(), remote.id());
                    pair.nominated = true;
                    pair.state = RTCStatsIceCandidatePairState::Succeeded;

                    // Cache the pair's stats key so the per-packet path can look
                    // the accumulator up by borrow instead of re-formatting (and
                    // allocating) the key on every read/write.
                    let key = format!("RTCIceCandidatePair_{}_{}", local.id(), remote.id());
                    self.ctx.selected_pair_key = Some(key.clone());
                    // Update transport stats for selected candidate pair change
                    self.stats.transport.on_selected_candidate_pair_changed(key);

                    self.ctx.event_outs.push_back(TaggedRTCEventInternal {
                        now,
                        event: RTCEventInternal::ICESelectedCandidatePairChange,
                    });
                }
                ::ice::Event::RoleChange(is_controlling) => {
                    self.stats.transport.on_ice_role_changed(is_controlling);
                }
                _ => {}
            }
        }

        self.ctx.event_outs.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        self.ctx.ice_transport.agent.handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.ctx.ice_transport.agent.poll_timeout()
    }

    fn close(&mut self) -> Result<()> {
        self.ctx.ice_transport.agent.close()
    }
}

impl IceHandler<'_> {
    /// What `handle_write` queues for `msg`: addressed to the selected candidate pair, or
    /// nothing before there is one. (Switchboard patch: split out of `handle_write` for
    /// `write_rtp_direct`.)
    pub(crate) fn route(
        &mut self,
        mut msg: TaggedRTCMessageInternal,
    ) -> Option<TaggedRTCMessageInternal> {
        if let Some((local, remote)) = self.ctx.ice_transport.agent.get_selected_candidate_pair() {
            // use ICE selected candidate pair to replace local/peer addr and
            // transport protocol: DTLS/SCTP endpoints run on placeholder
            // transport contexts, so without the protocol rewrite their
            // transmits stay stamped UDP even when the selected pair is TCP,
            // and consumers routing poll_write() output by transport_protocol
            // send every non-STUN packet down the wrong transport.
            // Use the local candidate's base address: for (server/peer-)
            // reflexive candidates the candidate address is the NAT mapping,
            // not a bound local socket (RFC 8445 §5.1.1).
            msg.transport.local_addr = local.base_addr();
            msg.transport.peer_addr = remote.addr();
            msg.transport.transport_protocol = local.network_type().to_protocol();
            debug!("Bypass ice write {:?}", msg.transport.peer_addr);

            // Track packets/bytes sent on the selected candidate pair, counted here and
            // added to its accumulator by `record_pair_traffic`.
            let traffic = &mut self.ctx.unrecorded;
            traffic.packets_sent += 1;
            traffic.bytes_sent += msg.message.len() as u64;
            traffic.last_sent = Some(msg.now);

            Some(msg)
        } else {
            trace!(
                "drop message from {:?} to {:?} before ICE connection is connected",
                msg.transport.local_addr, msg.transport.peer_addr,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! Switchboard patch: the selected pair's traffic is counted in the handler's context and
    //! reaches the pair's statistics when they are read, once.
    use crate::peer_connection::RTCPeerConnectionBuilder;
    use crate::statistics::StatsSelector;
    use crate::statistics::report::RTCStatsReportEntry;
    use std::time::{Duration, Instant};

    fn pair_counts(
        pc: &mut crate::peer_connection::RTCPeerConnection,
        now: Instant,
    ) -> (u64, u64, u64, u64) {
        let report = pc.get_stats(now, StatsSelector::None);
        let pair = report
            .iter()
            .find_map(|entry| match entry {
                RTCStatsReportEntry::IceCandidatePair(pair) => Some(pair),
                _ => None,
            })
            .expect("the selected pair's statistics");
        (
            pair.packets_sent,
            pair.bytes_sent,
            pair.packets_received,
            pair.bytes_received,
        )
    }

    #[test]
    fn traffic_reaches_the_selected_pair_when_statistics_are_read_and_only_once() {
        let base = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .build(base)
            .expect("build peer connection");
        let context = &mut pc.pipeline_context;
        context
            .stats
            .get_or_create_candidate_pair("local", "remote");
        context.ice_handler_context.selected_pair_key =
            Some("RTCIceCandidatePair_local_remote".to_owned());

        let traffic = &mut context.ice_handler_context.unrecorded;
        traffic.packets_sent += 3;
        traffic.bytes_sent += 3000;
        traffic.last_sent = Some(base + Duration::from_millis(5));
        traffic.packets_received += 2;
        traffic.bytes_received += 200;
        traffic.last_received = Some(base + Duration::from_millis(7));

        let now = base + Duration::from_millis(10);
        assert_eq!(pair_counts(&mut pc, now), (3, 3000, 2, 200));
        // Read again: nothing new, nothing counted twice.
        assert_eq!(pair_counts(&mut pc, now), (3, 3000, 2, 200));

        let pair =
            &pc.pipeline_context.stats.ice_candidate_pairs["RTCIceCandidatePair_local_remote"];
        assert_eq!(
            pair.last_packet_sent_timestamp,
            Some(base + Duration::from_millis(5))
        );
        assert_eq!(
            pair.last_packet_received_timestamp,
            Some(base + Duration::from_millis(7))
        );

        pc.pipeline_context
            .ice_handler_context
            .unrecorded
            .packets_sent += 1;
        pc.pipeline_context
            .ice_handler_context
            .unrecorded
            .bytes_sent += 100;
        assert_eq!(pair_counts(&mut pc, now), (4, 3100, 2, 200));
    }
}
