//! The `driftgate` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use driftgate::cli::eval::{evaluate, EvalReport};
use driftgate_detectors::{DetectorSpec, Direction, MetricKind};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: the hot path allocates small, short-lived strings
/// per record (decoded fields, event ids), where glibc's free-list consolidation took about a
/// sixth of the engine's time (measured figures in the README's performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "driftgate", version, about = "Runtime enforcement of behavioural contracts for AI agents")]
struct Cli {
    /// Log format (filter with RUST_LOG, e.g. `RUST_LOG=driftgate=debug`).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Metric {
    Bernoulli,
    Real,
    Categorical,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dir {
    Both,
    Increase,
    Decrease,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run against Kafka: telemetry topics in; enforcement, snapshot, history and dead-letter
    /// topics out. Settings come from the file and `DRIFTGATE_*` environment variables.
    Run {
        /// Configuration file (TOML).
        #[arg(long, env = "DRIFTGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The decision sidecar for routers and gateways: follows driftgate's snapshot and
    /// enforcement topics and serves per-request decisions over HTTP (JSON, and an
    /// auth-subrequest endpoint for NGINX `auth_request` and Envoy `ext_authz`).
    Route {
        /// Configuration file (TOML; `deploy/route.toml` shows every setting).
        #[arg(long, env = "DRIFTGATE_ROUTE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Backtest a detector on labelled JSONL events and score delay and false alarms.
    Eval {
        /// Metric kind of the values.
        #[arg(long, value_enum)]
        metric: Metric,
        /// Input file (.jsonl or .jsonl.gz; gzip is detected).
        #[arg(long)]
        input: PathBuf,
        /// Detector: auto, cusum, page-hinkley, adwin, ks, chi2, psi.
        #[arg(long, default_value = "auto")]
        detector: String,
        /// Target false alarms per in-control event.
        #[arg(long, default_value_t = 1e-5)]
        false_alarm_rate: f64,
        /// For `auto`: which changes to watch.
        #[arg(long, value_enum, default_value = "both")]
        direction: Dir,
        /// Detector options as a JSON object (merged over the defaults).
        #[arg(long)]
        options: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a simulated fleet through the engine core: no setup, no network.
    Demo {
        /// Also write the enforcement events (JSONL).
        #[arg(long)]
        events_out: Option<PathBuf>,
        /// Also write a backtest report of the day (self-contained HTML).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write the contract history (JSONL).
        #[arg(long)]
        history_out: Option<PathBuf>,
        /// After the run, serve `/metrics` and the HTTP API on this address until SIGTERM.
        #[arg(long)]
        listen: Option<String>,
        /// Bearer token accepted by `POST /v1/overrides` while serving.
        #[arg(long, env = "DRIFTGATE_HTTP__OVERRIDE_TOKEN", hide_env_values = true)]
        override_token: Option<String>,
        /// HMAC secret accepted by `POST /v1/overrides` while serving.
        #[arg(long, env = "DRIFTGATE_HTTP__OVERRIDE_HMAC_SECRET", hide_env_values = true)]
        override_hmac_secret: Option<String>,
    },
    /// Replay recorded telemetry (.jsonl[.gz] or Avro .avro) through the engine core.
    Replay {
        /// Pact files.
        #[arg(long, num_args = 1.., required = true)]
        pact: Vec<PathBuf>,
        /// Telemetry input.
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        files: ReplayFiles,
    },
    /// Validate pact files; prints `file:line:column: reason` for the first error of each.
    Validate {
        /// Pact files.
        #[arg(required = true)]
        pacts: Vec<PathBuf>,
    },
    /// Print the JSON Schema of pact files.
    PactSchema,
    /// Print the JSON Schema of the heartbeats on the snapshot topic.
    HeartbeatSchema,
    /// Write simulated fleet telemetry (for replay and benchmarks).
    Simulate {
        /// Output file (.jsonl or .avro).
        #[arg(long)]
        out: PathBuf,
        /// Number of telemetry events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Include the demo's scripted incidents.
        #[arg(long)]
        incidents: bool,
        /// Random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Contract history tools.
    History {
        #[command(subcommand)]
        cmd: HistoryCmd,
    },
}

#[derive(Subcommand)]
enum HistoryCmd {
    /// Verify a hash-chained history log (JSONL); names the first bad record.
    Verify {
        /// The history file.
        file: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run { config } => run_pipeline(config.as_deref()),
        Cmd::Route { config } => run_route(config.as_deref()),
        Cmd::Eval { metric, input, detector, false_alarm_rate, direction, options, json } => {
            eval_cmd(metric, &input, &detector, false_alarm_rate, direction, options.as_deref(), json)
        }
        Cmd::History { cmd: HistoryCmd::Verify { file } } => verify_history(&file),
        Cmd::Demo { events_out, report, history_out, listen, override_token, override_hmac_secret } => {
            demo_cmd(events_out, report, history_out, listen, override_token, override_hmac_secret)
        }
        Cmd::Validate { pacts } => validate_cmd(&pacts),
        Cmd::PactSchema => {
            print!("{}", driftgate_core::pact::pact_json_schema());
            Ok(())
        }
        Cmd::HeartbeatSchema => {
            print!("{}", driftgate_core::model::heartbeat::heartbeat_json_schema());
            Ok(())
        }
        Cmd::Simulate { out, events, incidents, seed } => simulate_cmd(&out, events, incidents, seed),
        Cmd::Replay { pact, input, files } => replay_cmd(&pact, &input, files),
    }
}

/// `driftgate eval`: one detector over a recorded stream.
fn eval_cmd(
    metric: Metric,
    input: &std::path::Path,
    detector: &str,
    false_alarm_rate: f64,
    direction: Dir,
    options: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let kind = match metric {
        Metric::Bernoulli => MetricKind::Bernoulli,
        Metric::Real => MetricKind::Real,
        Metric::Categorical => MetricKind::Categorical,
    };
    let mut spec = DetectorSpec::from_name(detector, false_alarm_rate)?;
    if let DetectorSpec::Auto(c) = &mut spec {
        c.direction = match direction {
            Dir::Both => Direction::Both,
            Dir::Increase => Direction::Increase,
            Dir::Decrease => Direction::Decrease,
        };
    }
    if let Some(opts) = options {
        spec = merge_options(&spec, opts)?;
    }
    let report = evaluate(input, kind, &spec).with_context(|| format!("evaluating {}", input.display()))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// `driftgate demo`: the simulated day, its report, and optionally its API.
fn demo_cmd(
    events_out: Option<std::path::PathBuf>,
    report: Option<std::path::PathBuf>,
    history_out: Option<std::path::PathBuf>,
    listen: Option<String>,
    override_token: Option<String>,
    override_hmac_secret: Option<String>,
) -> anyhow::Result<()> {
    let mut run = driftgate::cli::demo::run_with(report.is_some());
    print!("{}", driftgate::cli::demo::report(&run));
    if let Some(p) = report {
        let page = driftgate::cli::demo::html_report(&mut run);
        std::fs::write(&p, page).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote the report to {}", p.display());
    }
    if let Some(p) = events_out {
        let w = std::io::BufWriter::new(std::fs::File::create(&p)?);
        driftgate_core::codec::jsonl::write_all(w, &run.events)?;
    }
    if let Some(p) = history_out {
        driftgate_core::model::history::write_jsonl(std::fs::File::create(&p)?, &run.history)?;
    }
    if let Some(addr) = listen {
        let creds = driftgate::api::auth::Credentials::new(
            override_token.as_deref(),
            override_hmac_secret.as_deref(),
            300,
        );
        let control: std::sync::Arc<dyn driftgate::api::control::ControlPlane> =
            std::sync::Arc::new(driftgate::api::control::DemoControl::new(run));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving the demo's metrics and API until SIGTERM");
            let api = driftgate::api::http::serve(listener, driftgate::api::http::ApiState::new(control, creds));
            tokio::select! {
                r = api => r.context("HTTP server")?,
                _ = shutdown_signal() => {}
            }
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// `driftgate validate`: parses and compiles pact files.
fn validate_cmd(pacts: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut bad = 0;
    for p in pacts {
        match driftgate_core::pact::load_pact(p) {
            Ok(pact) => println!(
                "ok: {} ({} v{}, {} clauses)",
                p.display(),
                pact.id(),
                pact.version(),
                pact.doc.clauses.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} pact(s) refused", pacts.len());
    }
    Ok(())
}

/// `driftgate simulate`: writes the simulated fleet's telemetry to a file.
fn simulate_cmd(out: &std::path::Path, events: u64, incidents: bool, seed: u64) -> anyhow::Result<()> {
    let days = (events / 200_000 + 2) as i64;
    let records: Vec<_> = driftgate::cli::demo::Fleet::new(seed, days, incidents)
        .filter_map(|i| match i {
            driftgate_core::engine::Input::Telemetry(t) => Some(*t),
            _ => None,
        })
        .take(events as usize)
        .collect();
    if out.extension().is_some_and(|e| e == "avro") {
        driftgate::cli::replay::write_avro(out, &records)?;
    } else {
        let w = std::io::BufWriter::new(std::fs::File::create(out)?);
        driftgate_core::codec::jsonl::write_all(w, &records)?;
    }
    eprintln!("wrote {} telemetry records to {}", records.len(), out.display());
    Ok(())
}

/// `driftgate replay`'s optional files.
#[derive(clap::Args)]
struct ReplayFiles {
    /// Overrides (JSONL), merged in event-time order.
    #[arg(long)]
    overrides: Option<std::path::PathBuf>,
    /// Pact changes (JSONL, as `POST /v1/pacts` takes them, with `issued_at`), merged in
    /// event-time order: shadow, enforce, promote and roll back versions mid-replay.
    #[arg(long)]
    pact_changes: Option<std::path::PathBuf>,
    /// Where to write enforcement events (JSONL).
    #[arg(long)]
    events_out: Option<std::path::PathBuf>,
    /// Where to write the contract history (JSONL).
    #[arg(long)]
    history_out: Option<std::path::PathBuf>,
    /// Where to write records set aside as late, with their reason (JSONL).
    #[arg(long)]
    late_out: Option<std::path::PathBuf>,
    /// Where to write malformed records, with their reason (JSONL); the replay goes on
    /// without them. Without it, a replay stops at the first malformed record.
    #[arg(long)]
    dead_letter: Option<std::path::PathBuf>,
    /// A `driftgate run` configuration whose `[engine]` settings to use (default: the
    /// built-in defaults).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// A contract history (JSONL) whose `tick` records to apply at their input
    /// positions, to reproduce a live run's idle periods exactly.
    #[arg(long)]
    ticks: Option<std::path::PathBuf>,
    /// Write a backtest report (one self-contained HTML file): figures, lane timeline,
    /// and every enforcement event with its detector statistic.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// With `--report`: labelled incidents (JSONL: `agent_id`, `from`, optional `until`
    /// and `note`), to count true and false alarms.
    #[arg(long, requires = "report")]
    labels: Option<std::path::PathBuf>,
    /// With `--report`: new pact versions to replay the same input under, and to diff
    /// against the current ones.
    #[arg(long, num_args = 1.., requires = "report")]
    compare: Vec<std::path::PathBuf>,
}

/// `driftgate replay`: recorded input through the engine, offline.
fn replay_cmd(pact: &[std::path::PathBuf], input: &std::path::Path, f: ReplayFiles) -> anyhow::Result<()> {
    let ReplayFiles {
        dead_letter,
        overrides,
        pact_changes,
        events_out,
        history_out,
        late_out,
        config,
        ticks,
        report,
        labels,
        compare,
    } = f;
    let load = |files: &[std::path::PathBuf]| {
        files
            .iter()
            .map(|p| driftgate_core::pact::load_pact(p).map_err(anyhow::Error::from))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let pacts = load(pact)?;
    let report = match &report {
        Some(out) => Some(driftgate::cli::replay::ReportRequest {
            out,
            labels: labels.as_deref().map(driftgate::report::read_labels).transpose()?.unwrap_or_default(),
            compare: load(&compare)?,
            limits: driftgate::report::Limits::default(),
        }),
        None => None,
    };
    let engine = config
        .as_deref()
        .map(|c| driftgate::config::RunConfig::load(Some(c)).map(|c| c.engine))
        .transpose()?;
    let ticks = ticks.as_deref().map(driftgate::cli::replay::read_ticks).transpose()?.unwrap_or_default();
    let opts = driftgate::cli::replay::ReplayOptions {
        engine,
        overrides: overrides.as_deref(),
        pact_changes: pact_changes.as_deref(),
        ticks,
        events_out: events_out.as_deref(),
        history_out: history_out.as_deref(),
        late_out: late_out.as_deref(),
        dead_letter: dead_letter.as_deref(),
        report,
    };
    let s = driftgate::cli::replay::replay_with(pacts, input, &opts)?;
    eprintln!(
        "replayed {} records in {:.2} s ({:.0} records/s): {} enforcement events, {} history records, {} late, {} malformed",
        s.records,
        s.seconds,
        s.records as f64 / s.seconds.max(1e-9),
        s.events,
        s.history,
        s.late,
        s.dead_lettered
    );
    Ok(())
}

fn run_pipeline(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let cfg = driftgate::config::RunConfig::load(config)?;
    let pacts = cfg
        .pacts
        .iter()
        .map(|p| driftgate_core::pact::load_pact(p).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let status = Arc::new(driftgate::kafka::pipeline::Status::default());
    // The runtime serves signals and HTTP; the pipeline loop runs on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    {
        let status = status.clone();
        rt.spawn(async move {
            shutdown_signal().await;
            status.stop.store(true, Ordering::SeqCst);
        });
    }
    // Bound before connecting, so a taken port fails fast.
    let listener = match cfg.http.listen.trim() {
        "" => None,
        addr => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("cannot listen on `{addr}` (http.listen)"))?,
        ),
    };
    let creds = cfg.http.credentials();
    let metrics = Arc::new(driftgate::obs::metrics::Metrics::new());
    let control_topic = cfg.kafka.topics.control.clone().map(|topic| {
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| std::process::id().to_string());
        (
            driftgate::kafka::pipeline::consumer_config(&cfg),
            format!("{}-control-{instance}", cfg.kafka.group_id),
            topic,
        )
    });
    let pact_files = cfg.pacts.clone();
    let pipeline = driftgate::kafka::pipeline::Pipeline::start(cfg, pacts, status.clone(), metrics)?;
    let control: Arc<dyn driftgate::api::control::ControlPlane> = pipeline.control();
    {
        // SIGHUP re-reads the pact files: a changed version is enforced, an invalid one refused.
        let control = control.clone();
        // Installed inside the runtime: a signal stream needs its reactor.
        let mut hup = {
            let _rt = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot install the SIGHUP handler")?
        };
        rt.spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: re-reading the pact files");
                let (control, files) = (control.clone(), pact_files.clone());
                let reread = tokio::task::spawn_blocking(move || {
                    driftgate::api::pacts::reload_files(&*control, &files, driftgate::clock::wall_micros())
                });
                if let Err(e) = reread.await {
                    tracing::error!(error = %e, "pact file re-read failed");
                }
            }
        });
    }
    if let Some((client, group, topic)) = control_topic {
        driftgate::kafka::control_topic::spawn(client, group, topic, control.clone(), creds.clone(), status)?;
    }
    if let Some(listener) = listener {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics and the HTTP API");
        rt.spawn(async move {
            if let Err(e) =
                driftgate::api::http::serve(listener, driftgate::api::http::ApiState::new(control, creds))
                    .await
            {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    pipeline.run()?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// SIGTERM or SIGINT.
/// `driftgate route`: follow driftgate's topics and serve decisions until SIGTERM.
fn run_route(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::sync::Arc;
    let cfg = driftgate::route::RouteConfig::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(cfg.listen.trim()))
        .with_context(|| format!("cannot listen on `{}` (listen)", cfg.listen))?;
    let router = Arc::new(driftgate_router::Router::new(cfg.policy()));
    let follower = driftgate_router::follow(cfg.follow(), router.clone())?;
    // Checked by RouteConfig::check.
    let header = |h: &str| axum::http::HeaderName::from_bytes(h.as_bytes()).context("header name");
    let state = driftgate::route::http::RouteState::new(
        router,
        header(&cfg.agent_header)?,
        header(&cfg.risk_header)?,
    );
    tracing::info!(listen = %cfg.listen, "decision sidecar serving");
    rt.block_on(async move {
        axum::serve(listener, driftgate::route::http::routes(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
    })?;
    follower.stop();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

fn verify_history(file: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    match driftgate_core::model::history::verify(std::io::BufReader::new(f)) {
        Ok((n, last)) => {
            println!("ok: {n} records, chain intact, last hash {last}");
            Ok(())
        }
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    }
}

fn merge_options(spec: &DetectorSpec, opts: &str) -> anyhow::Result<DetectorSpec> {
    let mut base = serde_json::to_value(spec)?;
    let extra: serde_json::Value = serde_json::from_str(opts).context("--options must be a JSON object")?;
    let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) else {
        anyhow::bail!("--options must be a JSON object");
    };
    for (k, v) in e {
        b.insert(k.clone(), v.clone());
    }
    serde_json::from_value(base).context("invalid detector options")
}

fn print_report(r: &EvalReport) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!("metric               {}", r.metric);
    println!("detector             {}", r.detector);
    println!("false_alarm_rate     {}", r.false_alarm_rate.map_or("-".into(), |v| format!("{v:e}")));
    println!("reps (change/none)   {} / {}", r.reps_change, r.reps_nochange);
    println!("delay mean/med/p90   {} / {} / {}", f(r.mean_delay), f(r.median_delay), f(r.p90_delay));
    println!("missed               {}", r.missed);
    println!("false alarms / 100k  {:.3}", r.false_alarms_per_100k);
    println!("updates / s          {:.0}", r.updates_per_sec);
}
