//! The child-process harness of the tests that run `lastcall` (or a service under it) as a
//! real process: the binary without the test process's own settings, and a [`Child`] whose
//! stderr a thread collects, with waits that end at an event (the exit, the end of stderr, a
//! line logged), each bounded by [`PATIENCE`].

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Bounds a hang; not a measurement.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// A command for the `lastcall` binary with none of the test process's `LASTCALL_*`
/// variables, so its settings are the test's alone.
pub(super) fn lastcall() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lastcall"));
    for (key, _) in std::env::vars() {
        if key.starts_with("LASTCALL_") {
            command.env_remove(key);
        }
    }
    command
}

/// A started child process whose stderr is collected as it comes.
pub(super) struct Child {
    process: std::process::Child,
    stderr: Arc<Collected>,
}

/// What a reader thread has read so far, and whether it reached the end.
#[derive(Default)]
struct Collected {
    text: Mutex<(String, bool)>,
    /// Notified at each read and at the end.
    changed: Condvar,
}

impl Child {
    /// Spawns `command` with its stderr piped and collected; stdin and stdout stay as the
    /// command says.
    pub(super) fn spawn(command: &mut Command) -> Child {
        let mut process = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stderr = Arc::new(Collected::default());
        let mut pipe = process.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let mut text = sink.text.lock().unwrap();
                if n == 0 {
                    text.1 = true;
                    sink.changed.notify_all();
                    break;
                }
                text.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                sink.changed.notify_all();
            }
        });
        Child { process, stderr }
    }

    pub(super) fn id(&self) -> u32 {
        self.process.id()
    }

    pub(super) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.id() as i32), signal).unwrap();
    }

    /// Everything read from stderr so far.
    pub(super) fn stderr(&self) -> String {
        self.stderr.text.lock().unwrap().0.clone()
    }

    /// The first line of stdout (which must be piped), without its line end. The read end is
    /// closed afterwards, as when a log reader goes away: a process must live with that.
    pub(super) fn first_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.process.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .unwrap();
        line.trim_end().to_owned()
    }

    /// Waits for the exit, then for the end of stderr (the exit brings it, unless a process
    /// the child started still holds the pipe): the status and the whole stderr.
    pub(super) fn wait(mut self) -> (ExitStatus, String) {
        let status = self.exit();
        let stderr = self.stderr_until(|_, ended| ended, "the end of stderr");
        (status, stderr)
    }

    /// [`Child::wait`] for a process that handed its stderr on to a successor, which keeps
    /// it open: waits for the exit, then until stderr holds `last`, what it logs last.
    pub(super) fn wait_for_last(mut self, last: &str) -> (ExitStatus, String) {
        let status = self.exit();
        let stderr = self.stderr_until(|text, _| text.contains(last), last);
        (status, stderr)
    }

    /// Waits (at most [`PATIENCE`]) for the exit; kills the child and panics if none comes.
    fn exit(&mut self) -> ExitStatus {
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = self.process.kill();
                panic!("the child did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stderr once `done(text, ended)` holds, woken by each read; panics naming `what` when
    /// it does not within [`PATIENCE`].
    fn stderr_until(&self, done: impl Fn(&str, bool) -> bool, what: &str) -> String {
        let text = self.stderr.text.lock().unwrap();
        let (text, timeout) = self
            .stderr
            .changed
            .wait_timeout_while(text, PATIENCE, |(text, ended)| !done(text, *ended))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "stderr never showed {what}; stderr:\n{}",
            text.0
        );
        text.0.clone()
    }
}
