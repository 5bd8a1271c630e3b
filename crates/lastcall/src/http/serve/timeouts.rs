//! A connection's timeout decisions as a pure state machine: see [`Timeouts`].

use std::time::Duration;

use tokio::time::Instant;

use super::connection::Arrival;
use crate::Phase;

/// How long a request head half read at stop-accepting may take to complete, at most (less
/// when its header-read timeout has less left): a client that trickles its head cannot hold
/// the shutdown.
pub(super) const HEAD_GRACE: Duration = Duration::from_secs(1);

/// How long before the wait-for-work deadline a connection that only waits for a request is
/// closed, so that it is never counted as work cut there.
pub(super) const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The shortest time between two checks of the idle and header-read timeouts.
const MIN_CHECK: Duration = Duration::from_millis(10);

/// A connection's timeout settings, from its [`ServeConfig`](super::ServeConfig).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    /// The longest wait for the first request of a connection that has had none at
    /// stop-accepting (and, with [`HEAD_GRACE`], of one taken from the backlog after it).
    pub(super) linger: Duration,
    /// How long an idle keep-alive connection waits for its next request at stop-accepting.
    pub(super) idle_close_delay: Duration,
}

/// The connection's counters when a decision is asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    /// Requests whose head was read, ever.
    pub(super) requests: u64,
    /// Requests whose head was read and whose response has not been fully sent.
    pub(super) in_flight: u64,
    /// HTTP/2 or upgraded: no HTTP/1 heads to time any more.
    pub(super) no_heads: bool,
    /// How long the request head being read has taken so far, if one is.
    pub(super) reading_head: Option<Duration>,
    /// How long since a byte was last read or written.
    pub(super) quiet: Duration,
}

/// Where the shutdown stands when a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Moment {
    pub(super) now: Instant,
    pub(super) phase: Phase,
    /// The wait-for-work deadline, once the shutdown has been triggered.
    pub(super) wait_deadline: Option<Instant>,
    /// The shutdown follows a restart (feature `restart`): the listener stays open in the
    /// successor and no balancer moved the clients away.
    pub(super) restart: bool,
}

/// What the connection's task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing until `until`, or until a request arrives when `or_request` is set (or until
    /// the shutdown moves on, or the connection ends); then ask again.
    Sleep { until: Instant, or_request: bool },
    /// Start hyper's graceful shutdown (HTTP/1: keep-alive off, closed when idle; HTTP/2:
    /// GOAWAY), then ask again.
    GracefulShutdown,
    /// Drop the connection now.
    Close(Close),
}

/// Why a connection is closed by its task rather than by hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// The shutdown closed it before a whole request came: taken from the backlog and still
    /// without one after its grace, or with a head half read after its grace. Not work: its
    /// polite close drops its guard first.
    WithoutRequest,
    /// A request head was not complete within the header-read timeout.
    HeadTimeout,
    /// Still open at the wait-for-work deadline.
    Deadline,
}

/// The timeout decisions of one connection: the header-read and idle timeouts, and at the
/// shutdown the waits that keep a request already on its way from being cut off (the
/// first-request grace of a connection from the backlog, the half-read head's grace, the wait
/// for a next request), each ending [`DEADLINE_MARGIN`] before the wait-for-work deadline.
///
/// Pure: the connection's task feeds it the time, the phase and its [`Counters`], and does
/// what the [`Action`] says; no socket, timer or runtime is needed to drive it.
///
/// The idle and header-read timeouts are checked periodically rather than by a timer per
/// request (see `ConnState`): at least twice per header-read timeout, so a head that is not
/// complete in time is refused between 1 and 1.5 timeouts after its first byte.
#[derive(Debug)]
pub(super) struct Timeouts {
    limits: Limits,
    arrival: Arrival,
    /// The longest time between two periodic checks.
    tick: Duration,
    /// When the idle and header-read timeouts are checked next.
    next_check: Instant,
    /// hyper's graceful shutdown has begun (for a connection from the backlog, whose
    /// keep-alive is off, from the start).
    draining: bool,
    /// Set at stop-accepting: until when the connection waits for a (next) request, and how
    /// many it had had then.
    stop_wait: Option<(Instant, u64)>,
    /// For a connection taken from the backlog after stop-accepting: until when it may take
    /// to send its first request.
    first_request_by: Option<Instant>,
}

impl Timeouts {
    /// A connection accepted at `now`.
    pub(super) fn new(limits: Limits, arrival: Arrival, now: Instant) -> Timeouts {
        let tick = limits
            .idle_timeout
            .min(limits.header_read_timeout / 2)
            .max(MIN_CHECK);
        Timeouts {
            limits,
            arrival,
            tick,
            next_check: now + tick,
            // A connection taken from the backlog after stop-accepting has keep-alive off
            // already; a graceful shutdown now would close it before its request is read.
            draining: arrival == Arrival::AfterStop,
            stop_wait: None,
            first_request_by: None,
        }
    }

    /// Whether the shutdown made this connection wait for a request (its first, or a next
    /// one), so that closing it without one counts as closed without a request.
    pub(super) fn waited_for_request(&self) -> bool {
        self.stop_wait.is_some() || self.first_request_by.is_some()
    }

    /// What to do now.
    pub(super) fn next(&mut self, at: Moment, counters: Counters) -> Action {
        let now = at.now;
        if at.phase >= Phase::FlushTelemetry {
            return Action::Close(Close::Deadline);
        }
        // A wait for a request ends before the wait-for-work deadline, where the connection
        // would count as work cut.
        let before_deadline = |until: Instant| match at.wait_deadline {
            Some(deadline) => until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(now)),
            None => until,
        };
        // The earliest end of a wait for a request, if one is under way.
        let mut wait_until: Option<Instant> = None;
        let mut or_request = false;
        if self.arrival == Arrival::AfterStop && counters.requests == 0 && counters.in_flight == 0 {
            // Taken from the backlog and still without a whole request (silent, or trickling
            // its head): the same grace as a head half read at the stop, then closed without
            // a request, which hyper would not do before its first request.
            let grace = HEAD_GRACE.min(self.limits.linger);
            let until = *self
                .first_request_by
                .get_or_insert_with(|| before_deadline(now + grace));
            if now >= until {
                return Action::Close(Close::WithoutRequest);
            }
            wait_until = Some(until);
        }
        if at.phase >= Phase::StopAccepting && !self.draining {
            // An HTTP/1 connection with no request in flight is not closed at once when
            // - it has not had a request yet: a client that connected just before the stop
            //   may have its first one on the wire, and hyper would cancel a connection that
            //   has not read enough to tell HTTP/1 from HTTP/2, closing it under that request
            //   (a reset, for data already in the socket);
            // - a request head is half read: hyper would close it as idle;
            // - `idle_close_delay` asks to wait for the client's next request.
            // It waits for the next request, for at most the linger (the delay for the last
            // case), then closes as below; that request is answered with `Connection: close`.
            let limits = self.limits;
            let (until, requests_at_stop) = *self.stop_wait.get_or_insert_with(|| {
                let wait = match counters.reading_head {
                    // A head half read gets a short grace, never more than its header-read
                    // timeout has left: a client that trickles its head cannot hold the
                    // shutdown.
                    Some(reading) => {
                        HEAD_GRACE.min(limits.header_read_timeout.saturating_sub(reading))
                    }
                    None if counters.requests == 0 => limits.linger,
                    // After a restart the client of an idle keep-alive connection may be
                    // writing its next request right now, and no balancer moved it away:
                    // that request is answered here, bounded as the linger.
                    None if at.restart => limits.idle_close_delay.max(limits.linger),
                    None => limits.idle_close_delay,
                };
                (before_deadline(now + wait), counters.requests)
            });
            let waiting = now < until
                && counters.requests == requests_at_stop
                && counters.in_flight == 0
                && !counters.no_heads;
            if !waiting {
                if counters.in_flight == 0 && counters.reading_head.is_some() {
                    // hyper ignores a graceful shutdown while a head is half read, and would
                    // keep the connection until its header-read timeout: closed here instead.
                    return Action::Close(Close::WithoutRequest);
                }
                self.draining = true;
                return Action::GracefulShutdown;
            }
            wait_until = Some(wait_until.map_or(until, |other| other.min(until)));
            or_request = true;
        }
        if now >= self.next_check {
            // Once draining, the idle timeout no longer applies: only heads are checked.
            let idle_left = if self.draining {
                self.tick
            } else {
                self.limits.idle_timeout.saturating_sub(counters.quiet)
            };
            self.next_check = now + self.tick.min(idle_left).max(MIN_CHECK);
            if counters
                .reading_head
                .is_some_and(|reading| reading >= self.limits.header_read_timeout)
            {
                return Action::Close(Close::HeadTimeout);
            }
            if counters.quiet >= self.limits.idle_timeout && !self.draining {
                self.draining = true;
                return Action::GracefulShutdown;
            }
        }
        Action::Sleep {
            until: wait_until.map_or(self.next_check, |until| until.min(self.next_check)),
            or_request,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            header_read_timeout: 10 * SEC,
            idle_timeout: 60 * SEC,
            linger: SEC,
            idle_close_delay: Duration::ZERO,
        }
    }

    /// A connection driven by hand: a start instant, the time since then, the phase.
    struct Conn {
        timeouts: Timeouts,
        start: Instant,
        phase: Phase,
        wait_deadline: Option<Instant>,
        restart: bool,
    }

    impl Conn {
        fn new(limits: Limits, arrival: Arrival) -> Conn {
            let start = Instant::now();
            Conn {
                timeouts: Timeouts::new(limits, arrival, start),
                start,
                phase: if arrival == Arrival::AfterStop {
                    Phase::StopAccepting
                } else {
                    Phase::Running
                },
                wait_deadline: None,
                restart: false,
            }
        }

        /// Stop-accepting at `after`, with the wait-for-work deadline `deadline` after it.
        fn stop(&mut self, after: Duration, deadline: Duration) {
            self.phase = Phase::StopAccepting;
            self.wait_deadline = Some(self.start + after + deadline);
        }

        fn at(&mut self, after: Duration, counters: Counters) -> Action {
            let moment = Moment {
                now: self.start + after,
                phase: self.phase,
                wait_deadline: self.wait_deadline,
                restart: self.restart,
            };
            self.timeouts.next(moment, counters)
        }

        fn sleep(&self, until: Duration, or_request: bool) -> Action {
            Action::Sleep {
                until: self.start + until,
                or_request,
            }
        }
    }

    fn idle(quiet: Duration, requests: u64) -> Counters {
        Counters {
            requests,
            quiet,
            ..Counters::default()
        }
    }

    fn reading(for_: Duration, requests: u64) -> Counters {
        Counters {
            requests,
            reading_head: Some(for_),
            ..Counters::default()
        }
    }

    fn busy(requests: u64) -> Counters {
        Counters {
            requests,
            in_flight: 1,
            ..Counters::default()
        }
    }

    #[test]
    fn a_new_connection_sleeps_until_its_first_check_half_a_header_timeout_away() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(5 * SEC, false)
        );
        // A check that finds nothing late schedules the next one.
        assert_eq!(conn.at(5 * SEC, idle(MS, 1)), conn.sleep(10 * SEC, false));
    }

    #[test]
    fn a_head_not_complete_within_the_header_timeout_is_closed_at_a_check() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        assert_eq!(
            conn.at(5 * SEC, reading(4 * SEC, 0)),
            conn.sleep(10 * SEC, false)
        );
        assert_eq!(
            conn.at(10 * SEC, reading(9 * SEC + 999 * MS, 0)),
            conn.sleep(15 * SEC, false)
        );
        assert_eq!(
            conn.at(15 * SEC, reading(14 * SEC, 0)),
            Action::Close(Close::HeadTimeout)
        );
    }

    #[test]
    fn the_header_timeout_is_not_checked_between_checks() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        // Woken early (the phase moved, say) with a late head: the check waits for its time.
        assert_eq!(
            conn.at(SEC, reading(11 * SEC, 0)),
            conn.sleep(5 * SEC, false)
        );
    }

    #[test]
    fn a_quiet_connection_is_shut_down_gracefully_at_the_idle_timeout() {
        let limits = Limits {
            idle_timeout: 3 * SEC,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::BeforeStop);
        // The tick is the idle timeout when it is shorter than half the header timeout.
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(3 * SEC, false)
        );
        // 2 s quiet at the check: the next one comes when the idle timeout would be reached.
        assert_eq!(
            conn.at(3 * SEC, idle(2 * SEC, 1)),
            conn.sleep(4 * SEC, false)
        );
        assert_eq!(conn.at(4 * SEC, idle(3 * SEC, 1)), Action::GracefulShutdown);
        // Once: the next checks only look at heads, a tick apart.
        let next = 4 * SEC + 10 * MS;
        assert_eq!(conn.at(4 * SEC, idle(3 * SEC, 1)), conn.sleep(next, false));
        assert_eq!(
            conn.at(next, idle(3 * SEC, 1)),
            conn.sleep(next + 3 * SEC, false)
        );
    }

    #[test]
    fn checks_are_never_closer_than_ten_milliseconds() {
        let limits = Limits {
            idle_timeout: MS,
            header_read_timeout: MS,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::BeforeStop);
        assert_eq!(conn.at(Duration::ZERO, busy(1)), conn.sleep(10 * MS, false));
    }

    #[test]
    fn an_idle_keep_alive_connection_is_shut_down_at_once_at_stop() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(conn.at(SEC, idle(100 * MS, 3)), Action::GracefulShutdown);
        assert_eq!(conn.at(SEC, idle(100 * MS, 3)), conn.sleep(5 * SEC, false));
        assert!(conn.timeouts.waited_for_request());
    }

    #[test]
    fn after_a_restart_an_idle_connection_waits_the_linger_for_its_next_request() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.restart = true;
        conn.stop(SEC, 10 * SEC);
        // No balancer moved its client away: it may be writing its next request now.
        assert_eq!(conn.at(SEC, idle(100 * MS, 3)), conn.sleep(2 * SEC, true));
        assert_eq!(conn.at(1500 * MS, busy(4)), Action::GracefulShutdown);
    }

    #[test]
    fn with_idle_close_delay_an_idle_connection_waits_for_its_next_request() {
        let limits = Limits {
            idle_close_delay: 300 * MS,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(conn.at(SEC, idle(100 * MS, 3)), conn.sleep(1300 * MS, true));
        // Its next request came: answered with `Connection: close`.
        assert_eq!(conn.at(1100 * MS, busy(4)), Action::GracefulShutdown);
    }

    #[test]
    fn with_idle_close_delay_a_connection_whose_next_request_never_comes_is_shut_down() {
        let limits = Limits {
            idle_close_delay: 300 * MS,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(conn.at(SEC, idle(100 * MS, 3)), conn.sleep(1300 * MS, true));
        // A wake-up for nothing (the permit of an earlier request) changes nothing.
        assert_eq!(
            conn.at(1200 * MS, idle(300 * MS, 3)),
            conn.sleep(1300 * MS, true)
        );
        assert_eq!(
            conn.at(1300 * MS, idle(400 * MS, 3)),
            Action::GracefulShutdown
        );
    }

    #[test]
    fn a_connection_without_a_request_yet_waits_the_linger_for_its_first() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(conn.at(SEC, idle(SEC, 0)), conn.sleep(2 * SEC, true));
        assert_eq!(conn.at(2 * SEC, idle(2 * SEC, 0)), Action::GracefulShutdown);
    }

    #[test]
    fn a_request_in_flight_at_stop_is_finished_with_a_graceful_shutdown() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(conn.at(SEC, busy(1)), Action::GracefulShutdown);
        // hyper ends it after the response; the task only keeps checking heads.
        assert_eq!(conn.at(SEC, busy(1)), conn.sleep(5 * SEC, false));
        // The wait-for-work deadline cuts it.
        conn.phase = Phase::FlushTelemetry;
        assert_eq!(conn.at(11 * SEC, busy(1)), Action::Close(Close::Deadline));
    }

    #[test]
    fn an_http2_connection_gets_goaway_at_once_at_stop() {
        let limits = Limits {
            idle_close_delay: 300 * MS,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        let h2 = Counters {
            no_heads: true,
            ..idle(10 * MS, 2)
        };
        assert_eq!(conn.at(SEC, h2), Action::GracefulShutdown);
    }

    #[test]
    fn a_slowloris_head_at_stop_gets_its_grace_then_is_closed_without_a_request() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(3 * SEC, 10 * SEC);
        // Three seconds into its head: a second more at most.
        assert_eq!(
            conn.at(3 * SEC, reading(3 * SEC, 0)),
            conn.sleep(4 * SEC, true)
        );
        assert_eq!(
            conn.at(4 * SEC, reading(4 * SEC, 0)),
            Action::Close(Close::WithoutRequest)
        );
        assert!(conn.timeouts.waited_for_request());
    }

    #[test]
    fn a_half_read_head_never_gets_more_than_its_header_timeout_left() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(9700 * MS, 10 * SEC);
        // 9.7 s into a 10 s header timeout: 300 ms of grace, not a second.
        assert_eq!(
            conn.at(9700 * MS, reading(9700 * MS, 0)),
            conn.sleep(10 * SEC, true)
        );
        assert_eq!(
            conn.at(10 * SEC, reading(10 * SEC, 0)),
            Action::Close(Close::WithoutRequest)
        );
    }

    #[test]
    fn a_half_read_head_that_completes_in_its_grace_is_answered() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(SEC, 10 * SEC);
        assert_eq!(
            conn.at(SEC, reading(200 * MS, 2)),
            conn.sleep(2 * SEC, true)
        );
        assert_eq!(conn.at(1500 * MS, busy(3)), Action::GracefulShutdown);
    }

    #[test]
    fn waits_for_a_request_end_a_margin_before_the_wait_deadline() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        // The wait-for-work deadline 500 ms after the stop: the linger would outlast it.
        conn.stop(SEC, 500 * MS);
        let until = 1500 * MS - DEADLINE_MARGIN;
        assert_eq!(conn.at(SEC, idle(SEC, 0)), conn.sleep(until, true));
        assert_eq!(conn.at(until, idle(SEC, 0)), Action::GracefulShutdown);
    }

    #[test]
    fn a_deadline_closer_than_the_margin_ends_the_wait_at_once() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        conn.stop(SEC, 10 * MS);
        assert_eq!(conn.at(SEC, idle(SEC, 0)), Action::GracefulShutdown);
    }

    #[test]
    fn a_backlog_connection_whose_first_request_never_comes_is_closed_without_a_request() {
        let mut conn = Conn::new(limits(), Arrival::AfterStop);
        conn.wait_deadline = Some(conn.start + 10 * SEC);
        // No graceful shutdown (keep-alive is off already): a grace for the first request.
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(SEC, false)
        );
        assert_eq!(
            conn.at(SEC, idle(SEC, 0)),
            Action::Close(Close::WithoutRequest)
        );
        assert!(conn.timeouts.waited_for_request());
    }

    #[test]
    fn a_backlog_connection_whose_request_came_is_left_to_hyper() {
        let mut conn = Conn::new(limits(), Arrival::AfterStop);
        conn.wait_deadline = Some(conn.start + 10 * SEC);
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(SEC, false)
        );
        assert_eq!(conn.at(500 * MS, busy(1)), conn.sleep(5 * SEC, false));
        assert_eq!(conn.at(5 * SEC, idle(MS, 1)), conn.sleep(10 * SEC, false));
    }

    #[test]
    fn a_backlog_connections_grace_is_the_linger_when_shorter() {
        let limits = Limits {
            linger: 200 * MS,
            ..limits()
        };
        let mut conn = Conn::new(limits, Arrival::AfterStop);
        conn.wait_deadline = Some(conn.start + 10 * SEC);
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(200 * MS, false)
        );
    }

    #[test]
    fn a_backlog_connections_grace_ends_a_margin_before_the_wait_deadline() {
        let mut conn = Conn::new(limits(), Arrival::AfterStop);
        conn.wait_deadline = Some(conn.start + 300 * MS);
        assert_eq!(
            conn.at(Duration::ZERO, idle(Duration::ZERO, 0)),
            conn.sleep(300 * MS - DEADLINE_MARGIN, false)
        );
    }

    #[test]
    fn a_backlog_connection_trickling_its_head_is_closed_without_a_request() {
        let mut conn = Conn::new(limits(), Arrival::AfterStop);
        conn.wait_deadline = Some(conn.start + 10 * SEC);
        assert_eq!(
            conn.at(Duration::ZERO, reading(MS, 0)),
            conn.sleep(SEC, false)
        );
        assert_eq!(
            conn.at(SEC, reading(SEC, 0)),
            Action::Close(Close::WithoutRequest)
        );
    }

    #[test]
    fn every_connection_is_closed_at_the_wait_deadline() {
        for arrival in [Arrival::BeforeStop, Arrival::AfterStop] {
            let mut conn = Conn::new(limits(), arrival);
            conn.phase = Phase::FlushTelemetry;
            assert_eq!(conn.at(SEC, busy(1)), Action::Close(Close::Deadline));
        }
    }

    #[test]
    fn a_connection_the_stop_did_not_wait_for_does_not_count_as_closed_without_a_request() {
        let mut conn = Conn::new(limits(), Arrival::BeforeStop);
        assert_eq!(conn.at(5 * SEC, idle(SEC, 1)), conn.sleep(10 * SEC, false));
        assert!(!conn.timeouts.waited_for_request());
    }
}
