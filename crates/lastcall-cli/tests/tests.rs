//! The `lastcall` binary's integration tests, one module per area.

// Tests state their expectations with unwrap; a failure is the point.
#![allow(clippy::unwrap_used)]

// `lastcall demo` as a child process: real sockets, real signals.
mod demo;
// `lastcall check` against the reference service and against fixtures that get it wrong.
mod check;
// A short rolling restart of `lastcall demo` behind HAProxy.
mod rolling;
// The child-process harness: the binary without the test's own settings, collected stderr.
mod support;
// `lastcall plan` on the shipped deployment files and on each kind of mistake, per platform.
mod plan;
