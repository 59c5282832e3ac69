//! Prometheus metrics (`driftgate_*`, base units). Labels stay low-cardinality: pact,
//! clause, lane, scope, reason, kind, clock; never an agent id.
//!
//! Counters move as things happen (records, enforcement events) or from the engines'
//! [`Stats`] deltas; gauges over the whole state (agents per lane, overrides, coverage) are
//! recomputed from the engines when `/metrics` is scraped ([`Metrics::observe_engines`]).

use driftgate_core::engine::{Engine, Stats};
use driftgate_core::model::enforcement::EnforcementEvent;
use driftgate_core::model::lane::{ByScope, Lane};
use driftgate_core::model::overrides::OverrideKind;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::collections::BTreeSet;

/// Every metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Records read from the input topics.
    pub records_consumed: IntCounter,
    /// Records decoded into telemetry.
    pub records_decoded: IntCounter,
    /// Records refused by the decoder, by reason.
    pub records_rejected: IntCounterVec,
    /// Records written to the dead-letter topic, by reason.
    pub records_dead_lettered: IntCounterVec,
    /// Events set aside as later than the allowed lateness.
    pub records_late: IntCounter,
    /// Batches of input records, by how they were evaluated (`parallel` over several
    /// workers, `decode_ahead`, or `inline` on the pipeline thread).
    pub input_batches: IntCounterVec,
    /// Records per input batch.
    pub input_batch_records: Histogram,
    /// See [`crate::obs::events::BatchRecordsDropped`].
    pub batch_records_dropped: IntCounter,
    /// Records read one by one from the consumer's own queue (not through the batch queue).
    pub records_polled_singly: IntCounter,
    /// Input offsets skipped: legitimate after compaction or transaction markers, otherwise
    /// a sign of a broker that loses records.
    pub input_offset_gaps: IntCounter,
    /// See [`crate::obs::events::BufferedInputsLost`].
    pub restored_buffer_lost: IntCounter,
    /// Inputs waiting behind the watermark now.
    pub buffered_records: IntGauge,
    /// Inputs waiting behind the watermark, per input partition.
    pub partition_buffered: IntGaugeVec,
    /// How long the oldest buffered input has waited, per input partition, on the
    /// partition's clock (largest event time seen, plus wall time since the last record).
    pub partition_oldest_buffered_age: prometheus::GaugeVec,
    /// Wall time minus the partition's watermark.
    pub partition_watermark_lag: prometheus::GaugeVec,
    /// Ticks fed to idle partitions' engines.
    pub ticks_fed: IntCounter,
    /// Ticks that moved a watermark (and were written to the history).
    pub ticks_applied: IntCounter,
    /// Input partitions with no record for `engine.idle_timeout`.
    pub idle_partitions: IntGauge,
    /// Heartbeats produced.
    pub heartbeats: IntCounter,
    /// Inputs processed on arrival, ahead of the watermark (critical breaches, kills).
    pub fast_path: IntCounter,
    /// Inputs that were waiting behind the watermark when their partition was revoked (they
    /// travel in the snapshot to the partition's next owner).
    pub revoked_buffered_records: IntCounter,
    /// Consumer lag per input partition (librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Agents by effective lane and scope.
    pub agents: IntGaugeVec,
    /// Detector alarms by pact and clause.
    pub alarms: IntCounterVec,
    /// Scope-expansion triggers, by kind.
    pub scope_triggers: IntCounterVec,
    /// Pact versions in force, by pact and role (`active`, `shadow`); the value is the version.
    pub pact_versions: IntGaugeVec,
    /// Pact activations (through the API, the control topic or a re-read file), by outcome.
    pub pact_activations: IntCounterVec,
    /// Would-be enforcement events of shadow pact versions (not sent to routers), by pact.
    pub shadow_events: IntCounterVec,
    /// Enforcement events produced, by target lane and reason.
    pub enforcement_events: IntCounterVec,
    /// From the verifying record to the produced enforcement event (`clock` = `event`:
    /// estimated change point to the decision, in event time; `wall`: record timestamp to
    /// hand-over to the producer).
    pub drift_to_enforcement: HistogramVec,
    /// Overrides in force, by kind.
    pub overrides_active: IntGaugeVec,
    /// Loosening overrides in force (policy bypass).
    pub overrides_bypass_active: IntGauge,
    /// Minutes of policy bypass by loosening overrides (event time).
    pub override_bypass_minutes: prometheus::Counter,
    /// Seconds until the next override expires (event time); absent without overrides.
    pub override_next_expiry: Gauge,
    /// Overrides accepted.
    pub overrides_accepted: IntCounter,
    /// Overrides rejected, by channel (`engine`: failed validation; `http`/`control`:
    /// failed authentication or validation before reaching the engine).
    pub overrides_rejected: IntCounterVec,
    /// High-risk decisions (telemetry events of agents with high-risk clauses).
    pub high_risk_decisions: IntCounter,
    /// High-risk decisions whose high-risk clauses had fresh evidence.
    pub high_risk_fresh: IntCounter,
    /// Workflows with at least one agent under a pact.
    pub routed_workflows: IntGauge,
    /// Agents under at least one pact.
    pub routed_agents: IntGauge,
    /// Workflows seen in telemetry whose agents have no pact.
    pub unpacted_workflows: IntGauge,
    /// Agents seen in telemetry without any pact.
    pub unpacted_agents: IntGauge,
    /// Agents × clause × segment state keys.
    pub state_keys: IntGauge,
    /// Estimated bytes of keyed state (encoded size of a sample, scaled).
    pub state_bytes: IntGauge,
    /// Agents with stale high-risk evidence.
    pub stale_agents: IntGauge,
    /// Time to process one input record.
    pub processing: Histogram,
    /// Outputs the broker refused for good.
    pub produce_errors: IntCounter,
    /// Contract-history records written.
    pub history_records: IntCounter,
    /// Errors on the Kafka side, by stage and code (see `obs::events`).
    pub errors: IntCounterVec,
    /// Partitions assigned to or revoked from this instance.
    pub rebalanced_partitions: IntCounterVec,
    /// Exactly-once: transactions committed and aborted.
    pub transactions: IntCounterVec,
    /// 1 when ready (pacts loaded, state restored, partitions assigned).
    pub ready: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// One input partition's time-keeping, for the per-partition gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionTime {
    /// Inputs waiting behind the watermark.
    pub buffered: usize,
    /// Seconds the oldest of them has waited (see [`Metrics::partition_oldest_buffered_age`]).
    pub oldest_buffered_age: f64,
    /// Wall time minus the watermark, in seconds (absent before the first record).
    pub watermark_lag: Option<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let drift_to_enforcement = HistogramVec::new(
            HistogramOpts::new("driftgate_drift_to_enforcement_seconds", "From the behaviour change (event clock: estimated change point) or the verifying record (wall clock: its Kafka timestamp) to the enforcement event.")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0]),
            &["clock"],
        )
        .expect("valid metric");
        r.register(Box::new(drift_to_enforcement.clone())).expect("unique metric");
        let input_batch_records = Histogram::with_opts(
            HistogramOpts::new(
                "driftgate_input_batch_records",
                "Records per input batch (records polled in one turn, up to kafka.max_batch).",
            )
            .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
        )
        .expect("valid metric");
        r.register(Box::new(input_batch_records.clone())).expect("unique metric");
        let processing = Histogram::with_opts(
            HistogramOpts::new(
                "driftgate_processing_seconds",
                "Time to decode and process an input record, outputs handed to the producer: its batch's time divided by the batch's records.",
            )
            .buckets(vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1]),
        )
        .expect("valid metric");
        r.register(Box::new(processing.clone())).expect("unique metric");
        let bypass_minutes = prometheus::Counter::new(
            "driftgate_override_bypass_minutes_total",
            "Override-minutes (event time) during which loosening overrides bypassed pact policy.",
        )
        .expect("valid metric");
        r.register(Box::new(bypass_minutes.clone())).expect("unique metric");
        let next_expiry = Gauge::new(
            "driftgate_override_next_expiry_seconds",
            "Event-time seconds until the next override expires (absent: none in force).",
        )
        .expect("valid metric");
        Metrics {
            records_consumed: counter(&r, "driftgate_records_consumed_total", "Records read from the input topics."),
            records_decoded: counter(&r, "driftgate_records_decoded_total", "Records decoded into telemetry."),
            records_rejected: counter_vec(&r, "driftgate_records_rejected_total", "Records the decoder refused, by reason.", &["reason"]),
            records_dead_lettered: counter_vec(&r, "driftgate_records_dead_lettered_total", "Records written to the dead-letter topic, by reason.", &["reason"]),
            records_late: counter(&r, "driftgate_records_late_total", "Events later than the watermark by more than the allowed lateness."),
            buffered_records: gauge(&r, "driftgate_buffered_records", "Inputs waiting in the event-time buffer for the watermark to pass them."),
            partition_buffered: gauge_vec(&r, "driftgate_partition_buffered_records", "Inputs waiting behind the watermark, per input partition.", &["topic", "partition"]),
            partition_oldest_buffered_age: float_gauge_vec(&r, "driftgate_partition_oldest_buffered_age_seconds", "Age of the oldest input waiting behind the watermark, on the partition's clock (largest event time seen plus wall time since the last record).", &["topic", "partition"]),
            partition_watermark_lag: float_gauge_vec(&r, "driftgate_partition_watermark_lag_seconds", "Wall time minus the partition's watermark (event time).", &["topic", "partition"]),
            ticks_fed: counter(&r, "driftgate_ticks_fed_total", "Ticks fed to the engines of idle input partitions."),
            ticks_applied: counter(&r, "driftgate_ticks_applied_total", "Ticks that moved a watermark, releasing inputs or firing timers (each is a history record)."),
            idle_partitions: gauge(&r, "driftgate_idle_partitions", "Input partitions with no record for engine.idle_timeout."),
            heartbeats: counter(&r, "driftgate_heartbeats_total", "Heartbeats produced for routers (snapshot topic)."),
            fast_path: counter(&r, "driftgate_fast_path_inputs_total", "Inputs processed on arrival, ahead of the watermark (critical zero-tolerance breaches, emergency kills)."),
            revoked_buffered_records: counter(&r, "driftgate_revoked_buffered_records_total", "Inputs waiting behind the watermark when their partition was revoked (carried to the next owner in the snapshot)."),
            input_batches: counter_vec(&r, "driftgate_input_batches_total", "Batches of input records polled in one turn, by how they were evaluated: parallel (one partition per worker, several workers), decode_ahead (one partition, decoded ahead on a helper thread) or inline (on the pipeline thread alone).", &["evaluation"]),
            input_batch_records,
            batch_records_dropped: counter(&r, "driftgate_batch_records_dropped_total", "Records polled into a batch and dropped because a rebalance revoked or assigned their partition meanwhile; the partition's owner reads them again."),
            records_polled_singly: counter(&r, "driftgate_records_polled_singly_total", "Records read one by one from the consumer's own queue, because their partition was not forwarded to the batch queue (see driftgate_errors_total{stage=\"forward\"}); normally zero."),
            input_offset_gaps: counter(&r, "driftgate_input_offset_gaps_total", "Input records skipped between consecutive offsets of a partition (compaction, transaction markers, or a broker losing records)."),
            restored_buffer_lost: counter(&r, "driftgate_restored_buffer_lost_total", "Inputs a restored event-time buffer held by reference that could not be read again from the input topic (deleted by retention): never processed."),
            consumer_lag: gauge_vec(&r, "driftgate_consumer_lag_records", "Records behind the end of each input partition (librdkafka statistics).", &["topic", "partition"]),
            agents: gauge_vec(&r, "driftgate_agents", "Agents by effective lane and scope.", &["lane", "scope"]),
            alarms: counter_vec(&r, "driftgate_detector_alarms_total", "Detector alarms, by pact and clause.", &["pact", "clause"]),
            scope_triggers: counter_vec(&r, "driftgate_scope_triggers_total", "Scope-expansion triggers (new workflow, new tool, first high-risk action), by kind.", &["kind"]),
            pact_versions: gauge_vec(&r, "driftgate_pact_version", "Pact versions in force, by pact and role (active, shadow); the value is the version.", &["pact", "role"]),
            pact_activations: counter_vec(&r, "driftgate_pact_activations_total", "Pact activations requested, by outcome (enforced, shadowed, promoted, rolled_back, refused).", &["outcome"]),
            shadow_events: counter_vec(&r, "driftgate_shadow_events_total", "Would-be enforcement events of shadow pact versions (history only, not sent to routers), by pact.", &["pact"]),
            enforcement_events: counter_vec(&r, "driftgate_enforcement_events_total", "Enforcement events produced, by target lane and reason.", &["lane", "reason"]),
            drift_to_enforcement,
            overrides_active: gauge_vec(&r, "driftgate_overrides_active", "Overrides in force, by kind.", &["kind"]),
            overrides_bypass_active: gauge(&r, "driftgate_overrides_bypass_active", "Loosening overrides in force: pact policy bypassed."),
            override_bypass_minutes: bypass_minutes,
            override_next_expiry: next_expiry,
            overrides_accepted: counter(&r, "driftgate_overrides_accepted_total", "Overrides accepted."),
            overrides_rejected: counter_vec(&r, "driftgate_overrides_rejected_total", "Overrides rejected, by channel (engine validation, http or control-topic authentication).", &["channel"]),
            high_risk_decisions: counter(&r, "driftgate_high_risk_decisions_total", "Telemetry events of agents guarded by high-risk clauses."),
            high_risk_fresh: counter(&r, "driftgate_high_risk_fresh_evidence_total", "High-risk decisions whose high-risk clauses had fresh evidence."),
            routed_workflows: gauge(&r, "driftgate_pact_routed_workflows", "Workflows with agents under pact-aware routing."),
            routed_agents: gauge(&r, "driftgate_pact_routed_agents", "Agents under at least one pact."),
            unpacted_workflows: gauge(&r, "driftgate_unpacted_workflows", "Workflows seen in telemetry with no agent under a pact."),
            unpacted_agents: gauge(&r, "driftgate_unpacted_agents", "Agents seen in telemetry without any pact."),
            state_keys: gauge(&r, "driftgate_state_keys", "Keyed detector states (agent x clause x segment)."),
            state_bytes: gauge(&r, "driftgate_state_bytes", "Estimated bytes of keyed state (encoded size of a sample of agents, scaled)."),
            stale_agents: gauge(&r, "driftgate_stale_evidence_agents", "Agents with a high-risk clause whose evidence is stale."),
            processing,
            produce_errors: counter(&r, "driftgate_produce_errors_total", "Outputs the broker refused for good."),
            history_records: counter(&r, "driftgate_history_records_total", "Contract-history records written."),
            errors: counter_vec(&r, "driftgate_errors_total", "Errors on the Kafka side (consumer, commit, rebalance, restore, seek, heartbeat, audit, control topic), by stage and code.", &["stage", "code"]),
            rebalanced_partitions: counter_vec(&r, "driftgate_rebalanced_partitions_total", "Partitions assigned to or revoked from this instance.", &["change"]),
            transactions: counter_vec(&r, "driftgate_transactions_total", "Exactly-once delivery: Kafka transactions (outputs, changelog and input offsets) committed or aborted.", &["outcome"]),
            ready: gauge(&r, "driftgate_ready", "1 when pacts are loaded, state restored and partitions assigned."),
            registry: r,
        }
        .with_expiry_gauge()
    }

    fn with_expiry_gauge(self) -> Metrics {
        // Known label values start at zero, so rates and alerts see a series from the start.
        for k in driftgate_core::engine::state::ScopeKind::ALL {
            self.scope_triggers.with_label_values(&[k.as_str()]);
        }
        for o in ["enforced", "shadowed", "promoted", "rolled_back", "refused"] {
            self.pact_activations.with_label_values(&[o]);
        }
        for r in crate::kafka::decode::reason::ALL {
            self.records_rejected.with_label_values(&[r]);
            self.records_dead_lettered.with_label_values(&[r]);
        }
        self.records_dead_lettered.with_label_values(&["late_event"]);
        for c in ["engine", "http", "control"] {
            self.overrides_rejected.with_label_values(&[c]);
        }
        for c in ["event", "wall"] {
            self.drift_to_enforcement.with_label_values(&[c]);
        }
        // The errors whose code is a fixed word (the others carry librdkafka's code, known
        // only when they happen).
        for (stage, code) in crate::obs::events::FIXED_CODES {
            self.errors.with_label_values(&[stage, code]);
        }
        for c in ["assign", "revoke"] {
            self.rebalanced_partitions.with_label_values(&[c]);
        }
        for o in ["committed", "aborted"] {
            self.transactions.with_label_values(&[o]);
        }
        // Registered only while overrides are in force would need unregistering; a NaN
        // would break alert arithmetic, so the gauge is registered and reads +Inf when idle.
        self.override_next_expiry.set(f64::INFINITY);
        self.registry.register(Box::new(self.override_next_expiry.clone())).expect("unique metric");
        self
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts an enforcement event as it is produced; `record_time` is the Kafka timestamp
    /// (µs) of the record that caused it, `now` the wall clock (µs).
    pub fn enforcement(&self, e: &EnforcementEvent, record_time: Option<i64>, now: i64) {
        self.enforcement_events.with_label_values(&[e.lane_to.as_str(), &e.reason.code]).inc();
        if let Some(d) = &e.detection {
            let event_secs = (e.effective_at - d.first_post_change_at).max(0) as f64 / 1e6;
            self.drift_to_enforcement.with_label_values(&["event"]).observe(event_secs);
            if let Some(rt) = record_time {
                self.drift_to_enforcement
                    .with_label_values(&["wall"])
                    .observe((now - rt).max(0) as f64 / 1e6);
            }
        }
    }

    /// Adds the growth of an engine's counters since `last`, then remembers them.
    pub fn add_stats(&self, now: &Stats, last: &mut Stats) {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.records_late.inc_by(d(now.late, last.late));
        self.overrides_accepted.inc_by(d(now.overrides_accepted, last.overrides_accepted));
        self.overrides_rejected
            .with_label_values(&["engine"])
            .inc_by(d(now.overrides_rejected, last.overrides_rejected));
        self.high_risk_decisions.inc_by(d(now.high_risk_decisions, last.high_risk_decisions));
        self.high_risk_fresh.inc_by(d(now.high_risk_fresh, last.high_risk_fresh));
        self.fast_path.inc_by(d(now.fast_path, last.fast_path));
        for (label, n) in &now.alarms {
            let before = last.alarms.get(label).copied().unwrap_or(0);
            let (pact, clause) = label.split_once('/').unwrap_or((label.as_str(), ""));
            self.alarms.with_label_values(&[pact, clause]).inc_by(d(*n, before));
        }
        for (kind, n) in &now.scope_triggers {
            let before = last.scope_triggers.get(kind).copied().unwrap_or(0);
            self.scope_triggers.with_label_values(&[kind]).inc_by(d(*n, before));
        }
        for (pact, n) in &now.shadow_events {
            let before = last.shadow_events.get(pact).copied().unwrap_or(0);
            self.shadow_events.with_label_values(&[pact]).inc_by(d(*n, before));
        }
        *last = now.clone();
    }

    /// Sets the per-partition gauges, forgetting partitions no longer assigned.
    pub fn observe_partitions<'a>(&self, parts: impl Iterator<Item = (&'a str, i32, PartitionTime)>) {
        self.partition_buffered.reset();
        self.partition_oldest_buffered_age.reset();
        self.partition_watermark_lag.reset();
        for (topic, partition, t) in parts {
            let p = partition.to_string();
            self.partition_buffered.with_label_values(&[topic, &p]).set(t.buffered as i64);
            self.partition_oldest_buffered_age.with_label_values(&[topic, &p]).set(t.oldest_buffered_age);
            if let Some(lag) = t.watermark_lag {
                self.partition_watermark_lag.with_label_values(&[topic, &p]).set(lag);
            }
        }
    }

    /// Recomputes the state gauges over every engine; `event_now` is the latest event time
    /// (µs) and `elapsed_event` the event time since the previous call (for bypass minutes).
    pub fn observe_engines<'a>(&self, engines: impl Iterator<Item = &'a Engine>, elapsed_event_micros: i64) {
        let mut lanes = ByScope::both([0i64; 5]);
        let (mut kinds, mut bypass, mut next_expiry) = ([0i64; 4], 0i64, None::<i64>);
        let (mut routed, mut unpacted, mut keys, mut stale) = (0i64, 0i64, 0i64, 0i64);
        let (mut routed_wf, mut all_wf) = (BTreeSet::new(), BTreeSet::new());
        let (mut sample_bytes, mut sampled, mut agents_total) = (0usize, 0usize, 0usize);
        let mut buffered = 0usize;
        for engine in engines {
            buffered += engine.buffered();
            let now = engine.watermark().unwrap_or(0);
            for (id, a) in engine.agents() {
                agents_total += 1;
                for (scope, lane) in a.published.iter() {
                    lanes[scope][lane_index(*lane)] += 1;
                }
                for o in &a.overrides {
                    kinds[kind_index(o.req.kind)] += 1;
                    if o.req.kind == OverrideKind::Loosen {
                        bypass += 1;
                    }
                    let left = o.expires_at - now;
                    next_expiry = Some(next_expiry.map_or(left, |n: i64| n.min(left)));
                }
                all_wf.insert(a.workflow.clone());
                if a.pacts.is_empty() {
                    unpacted += 1;
                } else {
                    routed += 1;
                    routed_wf.insert(a.workflow.clone());
                }
                keys += a.clauses.len() as i64;
                if a.clauses.values().any(|c| c.stale) {
                    stale += 1;
                }
                // An estimate: encoding every agent on each scrape would cost more than it tells.
                if sampled < 64 {
                    sample_bytes += id.len() + driftgate_core::codec::changelog::encode_agent(a).len();
                    sampled += 1;
                }
            }
        }
        for (scope, counts) in lanes.iter() {
            for (i, lane) in LANES.iter().enumerate() {
                self.agents.with_label_values(&[lane.as_str(), scope.as_str()]).set(counts[i]);
            }
        }
        for (i, k) in ["emergency_kill", "tighten", "loosen", "attest"].iter().enumerate() {
            self.overrides_active.with_label_values(&[k]).set(kinds[i]);
        }
        self.overrides_bypass_active.set(bypass);
        if bypass > 0 && elapsed_event_micros > 0 {
            self.override_bypass_minutes.inc_by(bypass as f64 * elapsed_event_micros as f64 / 60e6);
        }
        self.override_next_expiry.set(next_expiry.map_or(f64::INFINITY, |s| s.max(0) as f64 / 1e6));
        self.routed_agents.set(routed);
        self.unpacted_agents.set(unpacted);
        self.routed_workflows.set(routed_wf.len() as i64);
        self.unpacted_workflows.set(all_wf.difference(&routed_wf).count() as i64);
        self.state_keys.set(keys);
        self.stale_agents.set(stale);
        self.buffered_records.set(buffered as i64);
        let per_agent = if sampled > 0 { sample_bytes as f64 / sampled as f64 } else { 0.0 };
        self.state_bytes.set((per_agent * agents_total as f64) as i64);
    }
}

const LANES: [Lane; 5] = [Lane::Normal, Lane::Watch, Lane::Degrade, Lane::Review, Lane::Block];

fn lane_index(l: Lane) -> usize {
    LANES.iter().position(|x| *x == l).unwrap_or(0)
}

fn kind_index(k: OverrideKind) -> usize {
    match k {
        OverrideKind::EmergencyKill => 0,
        OverrideKind::Tighten => 1,
        OverrideKind::Loosen => 2,
        OverrideKind::Attest => 3,
    }
}

/// The engines' share of a scrape, for whatever runs engines (the demo's one, the
/// pipeline's tasks): counters added since each engine's last scrape, then the gauges.
#[derive(Debug, Default)]
pub struct EngineScrape {
    /// The newest watermark at the last scrape: event time elapsed between scrapes.
    last_watermark: Option<i64>,
}

impl EngineScrape {
    /// Refreshes from `engines`, each with the counters it had at the last scrape.
    pub fn refresh<'a>(
        &mut self,
        metrics: &Metrics,
        engines: impl Iterator<Item = (&'a Engine, &'a mut Stats)>,
    ) {
        let mut seen = Vec::new();
        for (engine, last) in engines {
            metrics.add_stats(engine.stats(), last);
            seen.push(engine);
        }
        let wm = seen.iter().filter_map(|e| e.watermark()).max();
        let elapsed = match (std::mem::replace(&mut self.last_watermark, wm), wm) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        metrics.observe_engines(seen.into_iter(), elapsed);
    }
}
