//! The child-process harness of the tests that run an example as a real process (`process`,
//! `serve` and `tls` through it, `restart`, `worker`): where cargo put the example, a command
//! that carries none of the test process's own settings, a [`Child`] whose stdout lines and
//! stderr text are collected by threads of their own, waits bounded by [`PATIENCE`], signals.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lastcall::report::Report;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Generous: these bound a hang, they do not measure speed.
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// How long the pipes may stay open after the process exited: they end at once unless a
/// process it left behind holds them, and this only lets the reader threads catch up.
const PIPES_END: Duration = Duration::from_secs(5);

/// The example `name`, which cargo builds into `target/<profile>/examples/`.
pub(super) fn example(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test binary has a path");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p lastcall --examples --all-features` (or `cargo test`, \
         which builds the examples)",
        path.display()
    );
    path
}

/// A command for `program`: no stdin, stdout and stderr piped, `RUST_LOG=info`, then `env`.
/// The test process's own `LASTCALL_*`, `LISTEN_*` and `NOTIFY_SOCKET` are removed, so the
/// child's settings are the test's alone.
pub(super) fn command(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("LASTCALL_") || key.starts_with("LISTEN_") || key == "NOTIFY_SOCKET" {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info").envs(env.iter().copied());
    command
}

/// Whether a [`Child`]'s stderr is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stderr {
    /// Collected by a thread, readable with [`Child::stderr`].
    Read,
    /// A pipe nobody reads, held open: once its buffer is full every write to it blocks, as
    /// under Docker's blocking log mode.
    Unread,
}

/// A started child process with its output collected. Killed when dropped before it exited
/// (a failed test leaves nothing running).
pub(super) struct Child {
    process: std::process::Child,
    /// The program's file name, for messages.
    name: String,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Disconnected once stderr has been read to its end.
    stderr_read: Option<Receiver<()>>,
    /// The read end of an unread stderr, held open so that writers block.
    _unread: Option<ChildStderr>,
}

impl Child {
    /// Spawns `command`, whose stdout and stderr must be piped (as [`command`] makes them).
    pub(super) fn spawn(command: &mut Command, stderr: Stderr) -> Child {
        let name = Path::new(command.get_program())
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut process = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = process.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let text = Arc::new(Mutex::new(String::new()));
        let mut err = process.stderr.take().expect("piped stderr");
        let mut child = Child {
            process,
            name,
            lines,
            stderr: text.clone(),
            stderr_read: None,
            _unread: None,
        };
        if stderr == Stderr::Unread {
            child._unread = Some(err);
            return child;
        }
        let (read_to_end, stderr_read) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _read_to_end = read_to_end;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        child.stderr_read = Some(stderr_read);
        child
    }

    pub(super) fn id(&self) -> u32 {
        self.process.id()
    }

    /// The next stdout line, waiting until `until`. Panics, with stderr, when none comes by
    /// then or stdout ends first; `wanted` says what the caller waits for.
    pub(super) fn next_line(&self, until: Instant, wanted: &str) -> String {
        match self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "{}: no {wanted:?} line; stderr:\n{}",
                    self.name,
                    self.stderr()
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} exited before {wanted:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Everything read from stderr so far.
    pub(super) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub(super) fn signal(&self, signal: Signal) {
        self::signal(self.id(), signal);
    }

    /// Waits for the process to exit; kills it and panics when it has not within
    /// [`PATIENCE`].
    pub(super) fn wait(&mut self) -> ExitStatus {
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait for the child") {
                return status;
            }
            if Instant::now() > until {
                let _ = self.process.kill();
                panic!("{} did not exit; stderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After [`Child::wait`]: the stdout lines not taken yet, and the whole stderr, each read
    /// to its end (which the exit brings).
    pub(super) fn rest(&mut self) -> (Vec<String>, String) {
        let until = Instant::now() + PIPES_END;
        let mut stdout = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            stdout.push(line);
        }
        if let Some(read) = &self.stderr_read {
            let _ = read.recv_timeout(until.saturating_duration_since(Instant::now()));
        }
        (stdout, self.stderr())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Sends `signal` to `pid`, a child or a process one of them started.
pub(super) fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("signal {pid}: {e}"));
}

/// The report a fixture printed as its `report: JSON` line, if it printed one.
pub(super) fn report_in(stdout: &[String]) -> Option<Report> {
    stdout
        .iter()
        .find_map(|l| l.strip_prefix("report: "))
        .map(|json| serde_json::from_str(json).expect("the report line is a Report"))
}
