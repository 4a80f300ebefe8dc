//! Raw arguments, as the user typed them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::Exit;

const EXIT_CODES: &str = "\
Exit codes:
  0  succeeded (or the command did what it was asked)
  1  internal error, adapter or store failure, or the rollout failed
  2  bad usage, plan file or input
  3  the rollout rolled back or was aborted";

/// Canary blue/green deployments: move traffic from blue to green in
/// measured steps, judge green at every step, and send everything back to
/// blue the moment green misbehaves.
#[derive(Parser, Debug)]
#[command(name = "cutover", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// Log lines on stderr: `text` (readable) or `json` (one object per
    /// line). Which lines: `RUST_LOG` (e.g. `info`, `cutover_engine=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a plan file and print its timeline: each step's split, when it
    /// starts, how long it holds, the checks that gate it, and the total.
    #[command(after_help = EXIT_CODES)]
    Plan {
        /// The plan file (TOML); see docs/plan-file.md.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run a rollout to its end (or resume the service's unfinished one).
    /// Shows live progress on a terminal and plain log lines otherwise.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Start a rolled-back, aborted or failed rollout of the plan's service
    /// again from its first step, and drive it like `run`.
    #[command(after_help = EXIT_CODES)]
    Retry(RunArgs),
    /// Show the latest rollout of a service: phase, split, step, last verdict.
    #[command(after_help = EXIT_CODES)]
    Status(ReadArgs),
    /// Show every decision of the latest rollout (or `--all` rollouts) with
    /// its time, the observations behind it and the reason.
    #[command(after_help = EXIT_CODES)]
    History {
        #[command(flatten)]
        read: ReadArgs,
        /// List the service's past rollouts instead of one rollout's decisions.
        #[arg(long)]
        all: bool,
        /// How many rollouts `--all` lists.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Roll the service's active rollout back now (all traffic to blue).
    #[command(after_help = EXIT_CODES)]
    Abort(TargetArgs),
    /// Skip the remaining steps of the active rollout: straight to 100 %
    /// green, then the bake.
    #[command(after_help = EXIT_CODES)]
    Promote(TargetArgs),
    /// Stop the active rollout from advancing; the split stays and analysis
    /// keeps running (a failure still rolls back).
    #[command(after_help = EXIT_CODES)]
    Pause(TargetArgs),
    /// Let a paused rollout advance again.
    #[command(after_help = EXIT_CODES)]
    Resume(TargetArgs),
    /// Send all traffic of the active rollout to the live target now,
    /// whatever it is doing; while it is rolling back or cannot restore
    /// the live target, make it try again at once. Needs --force, since it
    /// interrupts a rollout in progress.
    #[command(after_help = EXIT_CODES)]
    Rollback {
        #[command(flatten)]
        target: TargetArgs,
        /// Yes, interrupt the active rollout.
        #[arg(long)]
        force: bool,
    },
    /// Run the embedded weighted HTTP proxy (the `local` router) with its
    /// admin API; see docs/proxy.md for the config file.
    #[command(after_help = EXIT_CODES)]
    Proxy {
        /// The proxy config file (TOML).
        config: PathBuf,
    },
    /// Create the plan's DynamoDB store table (on-demand billing), or with
    /// --print, show what to create.
    #[command(after_help = EXIT_CODES)]
    InitStore {
        /// A plan file with `[store] kind = "dynamodb"`.
        file: PathBuf,
        #[arg(long)]
        print: bool,
    },
    /// Watch ECS task events through SQS (the plan's `[trigger]`) and start
    /// one rollout per new task definition revision of the plan's services.
    #[command(after_help = EXIT_CODES)]
    Watch {
        file: PathBuf,
        /// How long each SQS receive waits for messages (long polling).
        #[arg(long, default_value = "20s", value_parser = duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        driving: DrivingArgs,
    },
    /// The always-on controller: drives every active rollout of the
    /// services whose plans are in --plans (including those left by
    /// processes that died), starts rollouts from the plans' triggers and
    /// from its HTTP API (docs/api.md), and serves Prometheus metrics at
    /// /metrics. Several replicas may share a DynamoDB store.
    #[command(after_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Print what to create outside cutover: `eventbridge` (the rule's
    /// event pattern and the queue policy for the plan's trigger).
    #[command(after_help = EXIT_CODES)]
    Print {
        #[arg(value_enum)]
        what: PrintWhat,
        file: PathBuf,
    },
    /// Print the least-privilege IAM policy the plan needs.
    #[command(after_help = EXIT_CODES)]
    IamPolicy { file: PathBuf },
    /// Show cutover's whole job on this machine, no set-up needed: blue and
    /// green sample apps, the proxy and steady load on loopback; one rollout
    /// where green is healthy and one where green fails real requests while
    /// its health endpoint says OK. Prints a summary and writes an HTML report.
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The plan file (TOML).
    pub file: PathBuf,
    /// SQLite store file (overrides the plan's `[store] path` and the
    /// default `$XDG_STATE_HOME/cutover/cutover.db`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Keep running in the background; prints the process id and log file.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub driving: DrivingArgs,
    /// Print progress as JSON lines (one line per event).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Deploy this image first: the plan's `[platform]` registers a new task
    /// definition revision for the idle colour with the image replaced in
    /// its container, and waits until it is steady before moving traffic.
    #[arg(long, conflicts_with = "task_definition")]
    pub image: Option<String>,
    /// Like --image, with a ready task definition (ARN or family:revision).
    #[arg(long)]
    pub task_definition: Option<String>,
    /// Start from the split the router has now instead of refusing
    /// anything but all traffic on the live target: continue at the first
    /// step at or above it. Not with --image / --task-definition.
    #[arg(long, conflicts_with_all = ["image", "task_definition"])]
    pub adopt: bool,
    /// A label for people (a version, a commit), shown with the rollout.
    #[arg(long)]
    pub label: Option<String>,
    /// Run the plan with blue's and green's roles exchanged: move traffic
    /// from the plan's green side to its blue side (e.g. back, after a
    /// successful rollout, without a platform).
    #[arg(long)]
    pub swap_colours: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory of plan files (`*.toml`), one per service. Read again on
    /// SIGHUP and when a file changes; a bad file is reported and skipped.
    #[arg(long)]
    pub plans: PathBuf,
    /// Address and port of the API and /metrics.
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub listen: String,
    /// Bearer token the API requires (needed to listen beyond loopback).
    #[arg(long, env = "CUTOVER_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// SQLite store file (default: the plans' `[store]`, which must agree).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// How often to look for rollouts nobody drives.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub scan: std::time::Duration,
    /// At most this many rollouts driven at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_rollouts: usize,
    /// How long each SQS receive of the plans' triggers waits.
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub wait: std::time::Duration,
    #[command(flatten)]
    pub driving: DrivingArgs,
}

/// How a long-running controller drives rollouts.
#[derive(Args, Debug, Clone)]
pub struct DrivingArgs {
    /// How long another process must wait before taking over a rollout
    /// whose driver stopped answering. From 1s to 1h, and at least three ticks.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub lease_ttl: std::time::Duration,
    /// How often operator commands are picked up (10ms to 60s).
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub tick: std::time::Duration,
    /// How long one call to the store may take before it counts as a
    /// failure (and is retried with back-off). From 100ms to 10m, and less
    /// than the lease TTL. Default: 10s, or a third of the lease TTL if
    /// that is shorter.
    #[arg(long, value_parser = duration)]
    pub store_timeout: Option<std::time::Duration>,
}

impl DrivingArgs {
    /// The engine options these ask for, checked.
    pub fn options(&self) -> Result<cutover_engine::Options, Exit> {
        let options = cutover_engine::Options {
            tick: self.tick,
            lease_ttl: self.lease_ttl,
            store_call_limit: self
                .store_timeout
                .unwrap_or_else(|| (self.lease_ttl / 3).min(std::time::Duration::from_secs(10))),
            ..cutover_engine::Options::default()
        };
        options
            .check()
            .map_err(|e| Exit::Usage(format!("--tick / --lease-ttl / --store-timeout: {e}")))?;
        Ok(options)
    }
}

/// Which rollout a command is about.
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// A plan file, or a service name.
    pub target: String,
    /// SQLite store file (default: the plan's, else the XDG state directory).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the HTML report.
    #[arg(long, default_value = "cutover-demo-report.html")]
    pub report: PathBuf,
    /// SQLite store for the demo's rollouts (default: a temporary file).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Share of green's requests that fail in the second scenario.
    #[arg(long, default_value_t = 0.3)]
    pub fail_ratio: f64,
    /// Requests per second of synthetic load.
    #[arg(long, default_value_t = 200)]
    pub rps: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrintWhat {
    Eventbridge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    cutover_core::time::parse_duration(text)
}

pub async fn dispatch(cli: Cli) -> Exit {
    match cli.command {
        Command::Plan { file, output } => crate::read::plan(&file, output),
        Command::Run(args) => crate::run::run(args, false).await,
        Command::Retry(args) => crate::run::run(args, true).await,
        Command::Status(args) => crate::read::status(args).await,
        Command::History { read, all, limit } => crate::read::history(read, all, limit).await,
        Command::Abort(t) => crate::read::command(t, cutover_core::Command::Abort).await,
        Command::Promote(t) => crate::read::command(t, cutover_core::Command::Promote).await,
        Command::Pause(t) => crate::read::command(t, cutover_core::Command::Pause).await,
        Command::Resume(t) => crate::read::command(t, cutover_core::Command::Resume).await,
        Command::Rollback { target, force } => {
            if !force {
                return Exit::Usage(
                    "`cutover rollback` interrupts the active rollout and sends all traffic to the live target: add --force".into(),
                );
            }
            crate::read::command(target, cutover_core::Command::Rollback).await
        }
        Command::Proxy { config } => crate::run::proxy(&config).await,
        Command::Demo(args) => crate::demo::demo(args).await,
        Command::InitStore { file, print } => crate::aws::init_store(&file, print).await,
        Command::Watch {
            file,
            wait,
            driving,
        } => crate::aws::watch(&file, wait, &driving).await,
        Command::Serve(args) => {
            let options = match args.driving.options() {
                Ok(o) => o,
                Err(e) => return e,
            };
            if args.max_rollouts == 0 {
                return Exit::Usage("--max-rollouts must be at least 1".into());
            }
            crate::serve::serve(crate::serve::ServeSettings {
                plans: args.plans,
                listen: args.listen,
                token: args.token.filter(|t| !t.is_empty()),
                store: args.store,
                scan: args.scan,
                max_rollouts: args.max_rollouts,
                wait: args.wait,
                options,
            })
            .await
        }
        Command::Print {
            what: PrintWhat::Eventbridge,
            file,
        } => crate::aws::print_eventbridge(&file),
        Command::IamPolicy { file } => crate::aws::iam_policy(&file),
    }
}
