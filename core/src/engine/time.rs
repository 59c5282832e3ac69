//! The event-time buffer, the watermark, timers and ticks.

use super::*;

impl Engine {
    /// The current watermark: the largest event time seen minus the out-of-orderness, or
    /// the floor set by the last applied tick, whichever is later.
    pub fn watermark(&self) -> Option<i64> {
        let seen = self.max_seen.map(|m| m.saturating_sub(self.cfg.max_out_of_orderness.micros()));
        match (seen, self.tick_floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The event time of the oldest input waiting for the watermark.
    pub fn oldest_buffered(&self) -> Option<i64> {
        self.buffer.first().map(|(t, _)| t)
    }

    /// The earliest event time at which something waits: a buffered input or a timer.
    pub fn next_due(&self) -> Option<i64> {
        match (self.oldest_buffered(), self.timers.first_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The largest event time seen, if any.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_seen
    }

    /// The passage of wall time, fed by a source whose partition has been idle. `at` is the
    /// source's event-time clock: the largest event time seen plus the wall time elapsed
    /// since the last record (the pipeline's rule, see the README). The watermark may
    /// reach `at - max_event_lag`, releasing buffered inputs and firing due timers.
    /// `wall_micros` is only recorded.
    ///
    /// A tick applies only if something is due by then (a buffered input or a timer);
    /// otherwise it changes nothing and returns false. An applied tick is written to the
    /// history (`tick`, with `at`, the wall time and the number of inputs offered before it),
    /// so that the same calls at the same input positions reproduce a run exactly.
    pub fn tick(&mut self, at: i64, wall_micros: i64) -> bool {
        // Restored entries still to be read again belong before what the tick would release.
        if !self.awaited.is_empty() {
            return false;
        }
        let floor = at.saturating_sub(self.cfg.max_event_lag.micros());
        let before = self.watermark();
        if before.is_some_and(|wm| wm >= floor) {
            return false;
        }
        if self.next_due().is_none_or(|due| due > floor) {
            return false;
        }
        self.tick_floor = Some(floor);
        self.stats.ticks += 1;
        let detail = serde_json::json!({
            "at": at,
            "wall_time": wall_micros,
            "after_inputs": self.stats.inputs,
            "watermark_before": before,
            "watermark": floor,
            "buffered": self.buffer.len(),
        });
        self.history(RecordKind::Tick, floor, None, None, detail);
        self.advance();
        true
    }

    /// Offers one input; processes whatever the watermark releases.
    ///
    /// A telemetry record that breaches a `critical` zero-tolerance clause, and an
    /// emergency-kill override, skip the out-of-orderness hold: whatever their arrival moves
    /// the watermark past is processed, then they are, at once. Inputs still held (of any
    /// agent, including the same one) are processed after them, in event-time order, as
    /// they would be after a late input; they cannot undo the block, which needs an
    /// attestation to step down.
    pub fn push(&mut self, input: Input) {
        self.offer(input, None);
    }

    /// Offers one input tagged with its position in a source (a Kafka offset). The tag
    /// travels with the input while it waits for the watermark, into the changelog too, so
    /// a restored buffer still knows where each of its inputs came from.
    pub fn push_tagged(&mut self, input: Input, tag: u64) {
        self.offer(input, Some(tag));
    }

    /// Inputs dated before this event time go to the late output (the watermark less the
    /// allowed lateness); `None` before the first input.
    pub fn late_before(&self) -> Option<i64> {
        self.watermark().map(|wm| wm.saturating_sub(self.cfg.allowed_lateness.micros()))
    }

    /// Inputs waiting in the event-time buffer for the watermark.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.awaited.len()
    }

    pub(super) fn offer(&mut self, input: Input, tag: Option<u64>) {
        self.stats.inputs += 1;
        let t = input.time();
        if let (Some(wm), Some(cutoff)) = (self.watermark(), self.late_before()) {
            if t < cutoff {
                self.late(input, wm);
                return;
            }
            if t < wm {
                self.stats.late_accepted += 1;
            }
        }
        self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
        let arrival = self.arrivals;
        self.arrivals += 1;
        if self.acts_on_arrival(&input) {
            // It skips the hold, not the watermark: what its arrival releases comes first,
            // so with no out-of-orderness the order is the same as on the normal path.
            self.stats.fast_path += 1;
            self.advance();
            self.process(input, false);
        } else {
            self.buffer.insert((t, arrival), (input, tag));
            self.advance();
        }
    }

    /// Whether an input must not wait for the watermark: an emergency kill, or telemetry
    /// that breaches a `critical` zero-tolerance clause of a pact covering its agent.
    pub(super) fn acts_on_arrival(&self, input: &Input) -> bool {
        let tel = match input {
            Input::Override(o) => return o.kind == OverrideKind::EmergencyKill,
            Input::Pact(_) => return false,
            Input::Telemetry(t) => t,
        };
        if !self.any_severe {
            return false;
        }
        let breaches_in = |p: u16| {
            self.severe[p as usize].iter().any(|&c| {
                let metric = &clause_at(&self.pacts, p, c).1.metric;
                metric.when.as_ref().is_none_or(|w| w.0.eval(tel) == Val::Bool(true))
                    && metric.value.0.eval(tel) == Val::Bool(true)
            })
        };
        // The record alone first: almost no record breaches any severe clause, and this
        // needs no look-up of the agent's coverage (which was a tenth of the engine's time).
        if !(0..self.severe.len() as u16).any(breaches_in) {
            return false;
        }
        let breaches = |pacts: &[u16]| pacts.iter().any(|&p| breaches_in(p));
        match self.agents.get(tel.agent_id.as_str()).filter(|a| *a.workflow == *tel.workflow) {
            Some(a) => breaches(&a.pacts),
            None => breaches(&self.covering(&tel.agent_id, &tel.workflow)),
        }
    }

    /// Releases every buffered input the watermark has passed, then fires due timers.
    pub(super) fn advance(&mut self) {
        let wm = self.watermark().unwrap_or(i64::MIN);
        while let Some((input, _tag)) = self.buffer.pop_until(wm) {
            self.process(input, true);
        }
        self.fire_timers(wm);
    }

    /// Processes everything still buffered (end of input).
    pub fn flush(&mut self) {
        while let Some((input, _tag)) = self.buffer.pop_until(i64::MAX) {
            self.process(input, true);
        }
        self.buffer.release_room();
    }

    /// Sets aside the input being offered, and only it: a source dead-letters the record it
    /// just pushed on the late output that push drained.
    pub(super) fn late(&mut self, input: Input, wm: i64) {
        self.stats.late += 1;
        let (id, agent) = match &input {
            Input::Telemetry(t) => (t.event_id.to_string(), t.agent_id.to_string()),
            Input::Override(o) => (o.override_id.clone(), o.agent_id.clone()),
            Input::Pact(c) => (c.change_id.clone(), String::new()),
        };
        let rec = LateRecord {
            id: id.clone(),
            agent_id: agent.clone(),
            occurred_at: input.time(),
            watermark: wm,
            reason: format!(
                "event time is {} s behind the watermark, beyond the allowed lateness of {}",
                (wm - input.time()) / 1_000_000,
                self.cfg.allowed_lateness
            ),
        };
        let detail = serde_json::to_value(&rec).unwrap_or_default();
        let agent = Some(agent).filter(|a| !a.is_empty());
        self.history(RecordKind::Late, wm, agent, None, detail);
        self.out.push(Output::Late(rec));
    }

    pub(super) fn schedule(&mut self, at: i64, timer: Timer) {
        self.timers.insert(at, timer);
    }

    pub(super) fn fire_timers(&mut self, upto: i64) {
        while let Some((at, timer)) = self.timers.pop_due(upto) {
            let agent = timer.agent();
            self.dirty.mark(agent, agent_entry(&mut self.agents, agent));
            self.now = self.now.max(at);
            self.stats.timers_fired += 1;
            match timer {
                Timer::Freshness(agent, key) => self.on_freshness_timer(&agent, key, at),
                Timer::OverrideExpiry(agent, id) => self.on_override_expiry(&agent, &id, at),
                Timer::Ttl(agent) => self.on_ttl(&agent, at),
            }
        }
    }
}
