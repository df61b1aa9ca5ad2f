//! The daemon's log: how much (`[log] level`, or `DMLOGD_LOG`), where
//! (stderr, or `[log] file`, which SIGHUP reopens for logrotate), in what
//! shape (text or JSON lines; with a syslog priority prefix such as `<4>`
//! on every line when stderr is the systemd journal, so that
//! `journalctl -p warning` filters), and a throttle on the Raft library's
//! repeated messages (one unreachable peer made ~480 lines a minute).
//!
//! SIGHUP re-reads the level from the configuration file and reopens the
//! log file ([`Logging::reload`]); it never stops the daemon.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::Subscriber;
use tracing::callsite::Identifier;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// The default level: dmlogd's own messages from `info`, the Raft
/// library's from `warn`.
pub const DEFAULT_LEVEL: &str = "info,openraft=warn";

/// The default throttle window for repeated library messages.
pub const DEFAULT_REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// How the log is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// Level directives (`info`, `debug`, `info,openraft=debug`, …).
    pub level: String,
    /// A file to append to instead of stderr.
    pub file: Option<PathBuf>,
    /// JSON lines instead of text.
    pub json: bool,
    /// One message per call site of the Raft library per this window (its
    /// repeats are counted and summed up); zero turns the throttle off.
    pub repeat_window: Duration,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings { level: DEFAULT_LEVEL.into(), file: None, json: false, repeat_window: DEFAULT_REPEAT_WINDOW }
    }
}

/// Checks level directives; the error names the bad one.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::builder().parse(level).map(|_| ()).map_err(|e| format!("log level {level:?}: {e}"))
}

/// The running log's handles.
pub struct Logging {
    level: reload::Handle<EnvFilter, Registry>,
    out: Output,
    throttle: Arc<Throttle>,
}

/// Installs the log for the whole process. `DMLOGD_LOG`, when set,
/// overrides the configured level.
pub fn init(settings: &LogSettings) -> Result<Logging, String> {
    let level = std::env::var("DMLOGD_LOG").unwrap_or_else(|_| settings.level.clone());
    let filter = EnvFilter::builder().parse(&level).map_err(|e| format!("log level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let out = Output::open(settings.file.as_deref())?;
    let throttle = Arc::new(Throttle::new(settings.repeat_window));
    // The journal adds its own time stamps and reads the priority prefix.
    let journal = settings.file.is_none() && std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(out.clone()).with_ansi(false);
    let fmt = if settings.json {
        fmt.json().boxed()
    } else if journal {
        fmt.event_format(Priority(tracing_subscriber::fmt::format().without_time().with_ansi(false))).boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(Throttled(throttle.clone())))
        .try_init()
        .map_err(|e| format!("log: {e}"))?;
    Ok(Logging { level: handle, out, throttle })
}

impl Logging {
    /// SIGHUP: the level from `level` (`None`: leave it) and the log file
    /// reopened. Says in the log what it did.
    pub fn reload(&self, level: Option<&str>) {
        match self.out.reopen() {
            Ok(Some(path)) => tracing::info!(file = %path.display(), "SIGHUP: log file reopened"),
            Ok(None) if level.is_none() => tracing::info!("SIGHUP: no log file and no configuration file to reload"),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: could not reopen the log file; still writing to the old one")
            }
        }
        let Some(level) = level else { return };
        match EnvFilter::builder().parse(level) {
            Ok(f) => match self.level.reload(f) {
                Ok(()) => tracing::info!(level, "SIGHUP: log level set"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: log level not changed"),
            },
            Err(e) => tracing::error!(level, error = %e, "SIGHUP: bad log level in the configuration; not changed"),
        }
    }

    /// The daemon is stopping: from now on the Raft library's messages are
    /// dropped. Its calls still in flight when its core stops each log an
    /// ERROR ("failure receiving rx from RaftCore", "Stopped") that is the
    /// orderly shutdown itself, not a fault.
    pub fn stopping(&self) {
        self.throttle.silenced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Says in the log how many repeats of which library messages the
    /// throttle held back since the last call (nothing if none).
    pub fn report_suppressed(&self) {
        let held = self.throttle.take_suppressed();
        if held.is_empty() {
            return;
        }
        let total: u64 = held.values().sum();
        let which: Vec<String> = held.iter().map(|(what, n)| format!("{what} ×{n}")).collect();
        tracing::warn!(
            suppressed = total,
            "repeated messages held back (one per call site per {} s): {}",
            self.throttle.window.as_secs(),
            which.join("; ")
        );
    }
}

/// Where lines go: stderr or a file that can be reopened.
#[derive(Clone)]
struct Output(Arc<Mutex<Sink>>);

enum Sink {
    Stderr,
    File(File, PathBuf),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Output {
    fn open(file: Option<&Path>) -> Result<Output, String> {
        let sink = match file {
            None => Sink::Stderr,
            Some(p) => Sink::File(append(p).map_err(|e| format!("log file {}: {e}", p.display()))?, p.to_owned()),
        };
        Ok(Output(Arc::new(Mutex::new(sink))))
    }

    /// Opens the file again by its name (logrotate moved the old one);
    /// returns the path, or `None` when logging to stderr.
    fn reopen(&self) -> io::Result<Option<PathBuf>> {
        let mut s = lock(&self.0);
        match &mut *s {
            Sink::Stderr => Ok(None),
            Sink::File(f, path) => {
                *f = append(path)?;
                Ok(Some(path.clone()))
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *lock(&self.0) {
            Sink::Stderr => io::stderr().write(buf),
            Sink::File(f, _) => f.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One line in one piece, under the lock.
        match &mut *lock(&self.0) {
            Sink::Stderr => io::stderr().write_all(buf),
            Sink::File(f, _) => f.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *lock(&self.0) {
            Sink::Stderr => io::stderr().flush(),
            Sink::File(f, _) => f.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = Output;

    fn make_writer(&'a self) -> Output {
        self.clone()
    }
}

/// Text lines with the syslog priority of their level in front (`<3>`
/// error, `<4>` warning, `<6>` info, `<7>` debug and trace), which the
/// journal takes from a service's stderr.
struct Priority(Format<tracing_subscriber::fmt::format::Full, ()>);

impl<S, N> FormatEvent<S, N> for Priority
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a level.
pub fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Lets one event per call site of the Raft library through per window and
/// counts the rest. dmlogd's own messages are never held back.
pub struct Throttle {
    window: Duration,
    /// Drop every library message (the daemon is stopping).
    silenced: std::sync::atomic::AtomicBool,
    seen: Mutex<HashMap<Identifier, Site>>,
}

struct Site {
    passed: Instant,
    held: u64,
    what: String,
}

impl Throttle {
    /// A throttle with `window` (zero: lets everything through).
    pub fn new(window: Duration) -> Throttle {
        Throttle { window, silenced: Default::default(), seen: Mutex::new(HashMap::new()) }
    }

    fn throttles(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event() && meta.target().starts_with("openraft")
    }

    /// Whether an event of `meta` may pass now; a held one is counted.
    pub fn pass(&self, meta: &tracing::Metadata<'_>) -> bool {
        if !self.throttles(meta) {
            return true;
        }
        if self.silenced.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        if self.window.is_zero() {
            return true;
        }
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        let key = meta.callsite();
        match seen.get_mut(&key) {
            Some(site) if now.duration_since(site.passed) < self.window => {
                site.held += 1;
                false
            }
            Some(site) => {
                site.passed = now;
                true
            }
            None => {
                let what = format!("{}:{}", meta.target(), meta.line().unwrap_or(0));
                seen.insert(key, Site { passed: now, held: 0, what });
                true
            }
        }
    }

    /// The counts held back since the last call, by call site.
    pub fn take_suppressed(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for site in lock(&self.seen).values_mut() {
            if site.held > 0 {
                *out.entry(site.what.clone()).or_default() += std::mem::take(&mut site.held);
            }
        }
        out
    }
}

/// A [`Throttle`] as a per-layer filter.
#[derive(Clone)]
pub struct Throttled(pub Arc<Throttle>);

impl<S> Filter<S> for Throttled {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        self.0.pass(meta)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        // Asked per event where it may hold events back.
        if self.0.throttles(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(tracing::Level::DEBUG), 7);
    }

    /// Counts the events that reach it.
    struct Count(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
            lock(&self.0).push(event.metadata().target().to_owned());
        }
    }

    #[test]
    fn library_repeats_are_held_back_and_counted_and_ours_never() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let throttle = Arc::new(Throttle::new(Duration::from_secs(3600)));
        let sub = tracing_subscriber::registry().with(Count(seen.clone()).with_filter(Throttled(throttle.clone())));
        tracing::subscriber::with_default(sub, || {
            for _ in 0..100 {
                tracing::warn!(target: "openraft::replication", "peer unreachable");
                tracing::warn!(target: "dmlogd::daemon", "ours");
            }
            tracing::error!(target: "openraft::replication", "another call site");
        });
        let seen = lock(&seen).clone();
        assert_eq!(seen.iter().filter(|t| t.starts_with("openraft")).count(), 2, "one per call site");
        assert_eq!(seen.iter().filter(|t| *t == "dmlogd::daemon").count(), 100);
        let held = throttle.take_suppressed();
        assert_eq!(held.values().sum::<u64>(), 99, "{held:?}");
        assert!(throttle.take_suppressed().is_empty(), "taken once");
    }

    #[test]
    fn a_bad_level_is_named() {
        assert!(check_level("info,openraft=warn").is_ok());
        let e = check_level("info,openraft=loud").unwrap_err();
        assert!(e.contains("openraft=loud"), "{e}");
    }
}
