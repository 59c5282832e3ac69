//! The `driftgate` command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use driftgate::eval::{evaluate, EvalReport};
use driftgate_detectors::{Direction, DetectorSpec, MetricKind};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "driftgate", version, about = "Runtime enforcement of behavioural contracts for AI agents")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Cmd::Eval { metric, input, detector, false_alarm_rate, direction, options, json } => {
            let kind = match metric {
                Metric::Bernoulli => MetricKind::Bernoulli,
                Metric::Real => MetricKind::Real,
                Metric::Categorical => MetricKind::Categorical,
            };
            let mut spec = DetectorSpec::from_name(&detector, false_alarm_rate)?;
            if let DetectorSpec::Auto(c) = &mut spec {
                c.direction = match direction {
                    Dir::Both => Direction::Both,
                    Dir::Increase => Direction::Increase,
                    Dir::Decrease => Direction::Decrease,
                };
            }
            if let Some(opts) = options {
                spec = merge_options(&spec, &opts)?;
            }
            let report = evaluate(&input, kind, &spec).with_context(|| format!("evaluating {}", input.display()))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(())
        }
        Cmd::History { cmd: HistoryCmd::Verify { file } } => verify_history(&file),
    }
}

fn verify_history(file: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    match driftgate::history::verify(std::io::BufReader::new(f)) {
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
    Ok(serde_json::from_value(base).context("invalid detector options")?)
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
