//! Showing a rollout as it goes: a live status line with a progress bar on
//! a terminal, plain log lines (or JSON lines) otherwise.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::time::Human;
use cutover_core::{Event, Rollout, Timestamp};

use crate::cli::Output;

/// `HH:MM:SS` (UTC).
pub fn clock_time(t: Timestamp) -> String {
    let secs = t.as_millis() / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn date_time(t: Timestamp) -> String {
    let days = (t.as_millis() / 86_400_000) as i64;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {}", clock_time(t))
}

/// One event as a JSON line: the rollout's id and the event's fields.
pub fn event_json(id: &str, e: &Event) -> String {
    cutover_server::json::event(id, e).to_string()
}

struct State {
    latest: Option<Rollout>,
    status_shown: bool,
}

/// Receives every persisted snapshot of a rollout and shows it.
#[derive(Clone)]
pub struct Progress {
    state: Arc<Mutex<State>>,
    tty: bool,
    output: Output,
    prefix: String,
    /// Start each line with the rollout's id (several rollouts at once).
    labelled: bool,
}

impl Progress {
    pub fn new(output: Output, prefix: impl Into<String>) -> Progress {
        Progress {
            state: Arc::new(Mutex::new(State {
                latest: None,
                status_shown: false,
            })),
            tty: std::io::stdout().is_terminal() && output == Output::Text,
            output,
            prefix: prefix.into(),
            labelled: false,
        }
    }

    /// Plain lines, each with its rollout's id: for a process driving
    /// several rollouts (`watch`, `serve`).
    pub fn labelled(mut self) -> Progress {
        self.tty = false;
        self.labelled = true;
        self
    }

    /// Plain lines even on a terminal (the demo prints its own summary).
    pub fn plain(mut self) -> Progress {
        self.tty = false;
        self
    }

    /// Shows `events`, just recorded for rollout `id`, now at `rollout`.
    /// As JSON: one line per event.
    pub fn update(&self, id: &str, rollout: &Rollout, events: &[Event]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut out = std::io::stdout().lock();
        if self.output == Output::Json {
            for e in events {
                let _ = writeln!(out, "{}", event_json(id, e));
            }
            let _ = out.flush();
            return;
        }
        if state.status_shown {
            let _ = write!(out, "\r\x1b[2K");
            state.status_shown = false;
        }
        let label = if self.labelled {
            format!("{id}  ")
        } else {
            String::new()
        };
        for e in events {
            let _ = writeln!(
                out,
                "{}{label}{}  {:>8}  {}",
                self.prefix,
                clock_time(e.at),
                e.split.to_string(),
                e.message
            );
        }
        state.latest = Some(rollout.clone());
        // Not for a rollout just created: what starts it prints its own
        // lines first, and the ticker draws the status line from then on.
        if self.tty && rollout.phase != cutover_core::Phase::Pending {
            let line = status_line(rollout, cutover_engine::Clock::system().now());
            let _ = write!(out, "{}", fit(&line, terminal_width()));
            state.status_shown = true;
        }
        let _ = out.flush();
    }

    /// Redraws the status line every second (time left moves on) and at
    /// once when the terminal is resized, until the returned task is
    /// aborted. Does nothing off a terminal.
    pub fn spawn_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.tty {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut resized = signal(SignalKind::window_change()).ok();
            loop {
                let resize = async {
                    match resized.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = resize => {}
                }
                let Ok(mut state) = me.state.lock() else {
                    return;
                };
                if let Some(r) = &state.latest {
                    let line = status_line(r, cutover_engine::Clock::system().now());
                    let line = fit(&line, terminal_width());
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "\r\x1b[2K{line}");
                    let _ = out.flush();
                    state.status_shown = true;
                }
            }
        }))
    }

    /// Ends the status line so later output starts on a fresh line.
    pub fn finish(&self) {
        if let Ok(mut state) = self.state.lock() {
            if state.status_shown {
                outln!();
                state.status_shown = false;
            }
        }
    }
}

/// `[######----] step 2/3 · 50 % green · holding · last: pass (…) · ~1m20s left`
fn status_line(r: &Rollout, now: Timestamp) -> String {
    let timeline = r.plan.timeline();
    let total = timeline.total.max(Duration::from_millis(1));
    let elapsed_in_plan = timeline
        .steps
        .get(r.step)
        .map_or(Duration::ZERO, |s| s.starts_at)
        + r.hold_ends_at().map_or(Duration::ZERO, |end| {
            let hold = end.since(r.phase_started);
            now.since(r.phase_started).min(hold)
        });
    let done = if r.phase.is_terminal() {
        1.0
    } else {
        elapsed_in_plan.as_secs_f64() / total.as_secs_f64()
    };
    let width = 24;
    let filled = ((done.clamp(0.0, 1.0)) * width as f64).round() as usize;
    let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled));
    let verdict = r
        .last_analysis
        .as_ref()
        .map(|e| {
            let first = &e.observations[0];
            format!(" · last: {} ({})", first.shown_verdict(), first.detail)
        })
        .unwrap_or_default();
    let left = if r.phase.is_terminal() {
        Duration::ZERO
    } else {
        total.saturating_sub(elapsed_in_plan)
    };
    let mut line = format!(
        "{bar} step {}/{} · {} on `{}` · {}{verdict} · ~{} left",
        r.step + 1,
        r.plan.strategy.steps.len(),
        r.split,
        r.targets().candidate,
        r.phase.name(),
        Human(Duration::from_secs(left.as_secs()))
    );
    // Without a terminal to measure, keep it on one line of a typical one.
    if line.chars().count() > 150 {
        line = line.chars().take(149).collect::<String>() + "…";
    }
    line
}

/// Stdout's width in columns, if it is a terminal that says.
fn terminal_width() -> Option<usize> {
    terminal_size::terminal_size_of(std::io::stdout())
        .map(|(terminal_size::Width(w), _)| usize::from(w))
        .filter(|&w| w > 0)
}

/// `line` cut to fit `columns` less one (a line filling the last column
/// makes some terminals wrap, and the next redraw a new line), ending in
/// `…` when cut. Control characters become spaces so nothing in a check's
/// detail can move the cursor.
fn fit(line: &str, columns: Option<usize>) -> String {
    let clean: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let Some(columns) = columns else {
        return clean;
    };
    let room = columns.saturating_sub(1).max(1);
    if clean.chars().count() <= room {
        return clean;
    }
    clean.chars().take(room - 1).chain(['…']).collect()
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn a_status_line_is_cut_to_the_terminal_with_an_ellipsis() {
        let line = "[####----] step 2/3 · 50 % on `green` · holding";
        assert_eq!(fit(line, None), line);
        assert_eq!(fit(line, Some(200)), line);
        let cut = fit(line, Some(20));
        assert_eq!(cut.chars().count(), 19);
        assert!(cut.ends_with('…') && line.starts_with(cut.trim_end_matches('…')));
        assert_eq!(fit("a\nb\rc", Some(80)), "a b c");
        assert_eq!(fit(line, Some(1)), "…");
    }
}
