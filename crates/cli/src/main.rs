//! `cutover`: the command-line front of the library crates.
//!
//! `cli` holds the raw arguments (clap); `settings` resolves them, with the
//! plan file, into what the commands need; each command lives in its own
//! module and returns an [`Exit`].
#![forbid(unsafe_code)]

/// `println!` that ends the process quietly when stdout is closed (e.g.
/// piped into `head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` with the same care as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod adapters;
mod aws;
mod cli;
mod demo;
mod logging;
mod progress;
mod read;
mod run;
mod serve;
mod settings;
mod signals;
mod start;

use std::process::ExitCode;

use clap::Parser;

/// How the process ends. The codes are part of the interface (see `--help`).
#[derive(Debug)]
pub enum Exit {
    /// 0: done; a rollout succeeded.
    Ok,
    /// 3: the rollout rolled back or was aborted.
    RolledBack,
    /// 2: bad usage, configuration or input.
    Usage(String),
    /// 1: anything else: an adapter or store failure, a failed rollout.
    Internal(String),
    /// 4: the store could not record for its deadline, so all traffic was
    /// sent to the live target and the run stopped; the message says where
    /// traffic is as the router confirmed it.
    StoreFailSafe(String),
}

impl Exit {
    /// What went wrong, for an exit that is an error.
    pub fn message(&self) -> String {
        match self {
            Exit::Ok => "ok".into(),
            Exit::RolledBack => "rolled back".into(),
            Exit::Usage(m) | Exit::Internal(m) | Exit::StoreFailSafe(m) => m.clone(),
        }
    }

    fn code(&self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Internal(_) => 1,
            Exit::Usage(_) => 2,
            Exit::RolledBack => 3,
            Exit::StoreFailSafe(_) => 4,
        }
    }
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.log_format);
    let exit = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(cli::dispatch(args)),
        Err(e) => Exit::Internal(format!("cannot start the async runtime: {e}")),
    };
    match &exit {
        Exit::Usage(m) => eprintln!("error: {m}"),
        Exit::Internal(m) | Exit::StoreFailSafe(m) => eprintln!("error: {m}"),
        Exit::Ok | Exit::RolledBack => {}
    }
    ExitCode::from(exit.code())
}
