//! Who holds which TCP socket, read from `/proc`: the listening socket's owners (a wrapper
//! that kept the server from the signal; the successor of a restart) and the process that
//! accepted one of the checker's connections (which generation answered); and, to clean up
//! after a restart, a process's children and start time.
//!
//! Everything here is best effort: where `/proc` cannot tell (another OS, no permission), the
//! answers are empty and the callers say so.

use std::collections::HashSet;

/// A process holding a listening socket on the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    /// The socket's inode: the same socket shared by two processes has one inode; a socket
    /// bound anew has another.
    pub(crate) inode: u64,
}

/// The processes holding a listening TCP socket on `port`, one entry per (process, socket).
pub(crate) fn listening(port: u16) -> Vec<Holder> {
    let inodes: HashSet<u64> = sockets(|local, _, state| local == port && state == LISTEN)
        .into_iter()
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        for inode in socket_inodes(pid) {
            if inodes.contains(&inode) {
                found.push(Holder { pid, inode });
            }
        }
    }
    found.sort_by_key(|h| (h.pid, h.inode));
    found.dedup();
    found
}

/// Which of `candidates` holds the server's end of the connection from local port
/// `client_port` to `server_port`; `None` when it cannot be told (the server closed it, or the
/// owner is not a candidate).
pub(crate) fn connection_owner(
    server_port: u16,
    client_port: u16,
    candidates: impl IntoIterator<Item = u32>,
) -> Option<u32> {
    let inodes = sockets(|local, remote, state| {
        local == server_port && remote == client_port && state == ESTABLISHED
    });
    // An accepted connection has an inode; one still in the backlog has 0.
    let inodes: HashSet<u64> = inodes.into_iter().filter(|i| *i != 0).collect();
    if inodes.is_empty() {
        return None;
    }
    candidates
        .into_iter()
        .find(|pid| socket_inodes(*pid).any(|inode| inodes.contains(&inode)))
}

/// The command line of `pid`, space-separated; empty when it cannot be read.
pub(crate) fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The children of `pid` (every thread's), from `/proc/PID/task/*/children`; empty where the
/// kernel does not say.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat`, field 22): with the pid, it
/// names one process, so a pid the kernel has reused since is not mistaken for it.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The state `0A` of `/proc/net/tcp`.
const LISTEN: u8 = 0x0A;
/// The state `01`.
const ESTABLISHED: u8 = 0x01;

/// The inodes of the TCP sockets (IPv4 and IPv6) whose (local port, remote port, state) pass
/// `keep`.
fn sockets(keep: impl Fn(u16, u16, u8) -> bool) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
                port(local),
                port(remote),
                u8::from_str_radix(state, 16),
                inode.parse::<u64>(),
            ) else {
                continue;
            };
            if keep(local, remote, state) {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// The inodes of the sockets among `pid`'s open files.
fn socket_inodes(pid: u32) -> impl Iterator<Item = u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
}
