use std::sync::{Arc, Mutex};
use std::time::Duration;

use lastcall::health::HealthState;
use lastcall::report::{PhaseOutcome, StepOutcome, TriggerCause};
use lastcall::{Controller, Exit, Phase, WorkKind};
use tokio::time::Instant;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn controller() -> Controller {
    Controller::builder()
        .continue_after_run()
        .ignore_env()
        .budget(secs(30))
        .build()
        .expect("valid test configuration")
}

#[tokio::test(start_paused = true)]
async fn phases_are_reached_in_order_exactly_once() {
    let controller = controller();
    let shutdown = controller.shutdown();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for &phase in Phase::ALL[1..].iter().rev() {
        let (shutdown, seen) = (shutdown.clone(), seen.clone());
        tokio::spawn(async move {
            shutdown.reached(phase).await;
            // Record the phase the controller is in when this waiter wakes.
            seen.lock().unwrap().push((phase, shutdown.phase()));
        });
    }
    tokio::task::yield_now().await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing is reached before the trigger"
    );
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    tokio::task::yield_now().await;

    let seen = seen.lock().unwrap().clone();
    let mut phases: Vec<Phase> = seen.iter().map(|(p, _)| *p).collect();
    phases.sort();
    assert_eq!(
        phases,
        Phase::ALL[1..].to_vec(),
        "each phase is reached once"
    );
    for (waited_for, current) in seen {
        assert!(
            current >= waited_for,
            "{waited_for} resolved while still in {current}"
        );
    }
    let order: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(order, Phase::ALL[1..7].to_vec());
    assert_eq!(report.exit, Exit::Clean);
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_at_the_trigger_but_stop_accepting_waits_for_the_drain_delay() {
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .drain_delay(secs(5))
        .build()
        .unwrap();
    let shutdown = controller.shutdown();
    let trigger = controller.trigger();
    let run = tokio::spawn(controller.run_with_report());
    tokio::task::yield_now().await;
    assert_eq!(shutdown.health().state(), HealthState::Ready);

    let trigger_at = Instant::now();
    assert!(trigger.trigger("test"));
    assert_eq!(
        shutdown.health().state(),
        HealthState::Draining,
        "readiness flips at once"
    );
    assert!(
        shutdown.health().is_live(),
        "liveness stays up while draining"
    );

    shutdown.reached(Phase::StopAccepting).await;
    assert!(
        trigger_at.elapsed() >= secs(5),
        "listeners stay open during the drain delay"
    );
    let report = run.await.unwrap();
    assert_eq!(shutdown.health().state(), HealthState::Stopped);
    let drain = report.phase(Phase::DrainDelay).unwrap();
    assert_eq!(drain.duration, secs(5));
}

#[tokio::test(start_paused = true)]
async fn waiting_for_work_ends_the_moment_the_last_guard_drops() {
    let controller = controller();
    let tracker = controller.tracker().clone();
    for (label, after) in [("job-1", 1), ("job-2", 3), ("job-3", 2)] {
        let guard = tracker.job(label);
        tokio::spawn(async move {
            tokio::time::sleep(secs(after)).await;
            drop(guard);
        });
    }
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    let wait = report.phase(Phase::WaitForWork).unwrap();
    assert_eq!(wait.outcome, PhaseOutcome::Completed);
    // The paused clock only moves when every task is idle, so this is exact: the phase ended
    // when job-2 dropped its guard, not at a poll tick after it.
    assert_eq!(wait.started + wait.duration, secs(3));
    assert_eq!(report.exit, Exit::Clean);
}

#[tokio::test(start_paused = true)]
async fn work_still_active_at_the_wait_deadline_is_cut_and_named() {
    let controller = controller();
    let _stuck = controller.tracker().request("GET /reports/slow?ms=600000");
    let _stream = controller.tracker().stream("GET /events");
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    let wait = report.phase(Phase::WaitForWork).unwrap();
    assert_eq!(wait.outcome, PhaseOutcome::DeadlineReached);
    assert_eq!(
        wait.started + wait.duration,
        secs(23),
        "cut exactly at the wait deadline"
    );
    let cut = report
        .work_at_deadline
        .expect("work was active at the deadline");
    assert_eq!(cut.count, 2);
    assert_eq!(cut.by_kind.get(WorkKind::Request), 1);
    assert_eq!(cut.by_kind.get(WorkKind::Stream), 1);
    let labels: Vec<&str> = cut.items.iter().map(|i| i.label.as_str()).collect();
    assert!(
        labels.contains(&"GET /reports/slow?ms=600000"),
        "{labels:?}"
    );
    assert_eq!(report.exit, Exit::WorkCut);
    assert_eq!(report.exit_code, 3);
}

#[tokio::test(start_paused = true)]
async fn a_step_gets_the_smaller_of_its_timeout_and_its_phase_left() {
    let controller = controller();
    // The flush reserve is 2s: a 10s timeout is capped to it.
    controller.flush("metrics", secs(10), std::future::pending::<()>);
    // Close has 5s: a 1s timeout stands.
    controller.close("broker", secs(1), std::future::pending::<()>);
    controller.close("database", Duration::ZERO, || async {});
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    let steps: Vec<_> = report
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.timeout, &s.outcome))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("metrics", secs(2), &StepOutcome::TimedOut),
            ("broker", secs(1), &StepOutcome::TimedOut),
            // A zero timeout means "what the phase has left": 5s - 1s - the 50ms exit reserve.
            ("database", Duration::from_millis(3950), &StepOutcome::Ok),
        ]
    );
    assert_eq!(report.exit, Exit::CleanupFailed);
    assert!(report.total < secs(30), "the budget holds");
}

#[tokio::test(start_paused = true)]
async fn failing_and_panicking_steps_are_recorded_and_later_steps_still_run() {
    let controller = controller();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    controller.close("broker", secs(1), move || async move {
        o.lock().unwrap().push("broker");
        Err::<(), _>(std::io::Error::other("broker said no"))
    });
    let o = order.clone();
    controller.close("cache", secs(1), move || async move {
        o.lock().unwrap().push("cache");
        let broken = true;
        if broken {
            panic!("cache client bug");
        }
    });
    let o = order.clone();
    controller.close("database", secs(1), move || async move {
        o.lock().unwrap().push("database");
    });
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    assert_eq!(*order.lock().unwrap(), ["broker", "cache", "database"]);
    assert_eq!(
        report.steps[0].outcome,
        StepOutcome::Failed {
            error: "broker said no".into()
        }
    );
    assert_eq!(
        report.steps[1].outcome,
        StepOutcome::Panicked {
            message: "cache client bug".into()
        }
    );
    assert_eq!(report.steps[2].outcome, StepOutcome::Ok);
    assert_eq!(
        report.phase(Phase::CloseDependencies).unwrap().outcome,
        PhaseOutcome::StepsFailed
    );
    assert_eq!(report.exit, Exit::CleanupFailed);
}

#[tokio::test(start_paused = true)]
async fn later_triggers_are_recorded_and_start_nothing() {
    let controller = controller();
    let runs = Arc::new(Mutex::new(0));
    let r = runs.clone();
    controller.on_stop_accepting("listener", secs(1), move || async move {
        *r.lock().unwrap() += 1;
    });
    assert!(controller.trigger().trigger("deploy"));
    assert!(!controller.trigger().trigger("admin"));
    assert!(!controller.trigger().fatal("late error"));
    let report = controller.run_with_report().await;
    assert_eq!(*runs.lock().unwrap(), 1, "the hook ran once");
    assert_eq!(
        report.trigger,
        TriggerCause::Requested {
            reason: "deploy".into()
        }
    );
    assert_eq!(report.later_signals.len(), 2);
    assert_eq!(
        report.exit,
        Exit::Clean,
        "a later fatal trigger does not change the outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fatal_trigger_exits_non_zero_even_when_clean() {
    let controller = controller();
    controller.trigger().fatal("schema mismatch");
    let report = controller.run_with_report().await;
    assert_eq!(report.exit, Exit::Fatal);
    assert_eq!(report.exit_code, 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_while_draining_are_counted_in_the_report() {
    let controller = controller();
    let rejections = controller.rejections();
    controller.trigger().trigger("test");
    rejections.record();
    rejections.clone().record(); // clones count into the same total
                                 // The deprecated observer method still counts there too, for one release.
    #[allow(deprecated)]
    controller.shutdown().record_rejection();
    assert_eq!(rejections.count(), 3);
    let report = controller.run_with_report().await;
    assert_eq!(report.rejected_while_draining, 3);
}

#[tokio::test(start_paused = true)]
async fn the_report_round_trips_through_json() {
    let controller = controller();
    let _work = controller.tracker().job("orders:42");
    controller.close("database", secs(1), || async {});
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    let json = report.to_json();
    assert!(json.contains("\"exit\":\"work_cut\""), "{json}");
    assert!(
        json.contains("\"total_ms\":30000.0"),
        "budget in ms: {json}"
    );
    let back: lastcall::report::Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.exit, report.exit);
    assert_eq!(back.work_at_deadline.unwrap().items[0].label, "orders:42");
    assert!(
        report.to_string().contains("cut at the wait deadline"),
        "{report}"
    );
}

#[test]
fn the_report_is_recorded_through_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let report = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let controller = controller();
                let _work = controller.tracker().job("stuck");
                controller.close("broker", secs(1), std::future::pending::<()>);
                controller.rejections().record();
                controller.trigger().trigger("test");
                controller.run_with_report().await
            })
    });
    assert_eq!(report.exit, Exit::WorkCut);
    let metrics: Vec<_> = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        metrics
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && label.is_none_or(|(k, v)| {
                        key.key().labels().any(|l| l.key() == k && l.value() == v)
                    })
            })
            .map(|(.., value)| value)
            .unwrap_or_else(|| panic!("metric {name} {label:?} not recorded"))
    };
    assert_eq!(
        find("lastcall_shutdown_exit_code", None),
        &DebugValue::Gauge(3.0.into())
    );
    assert_eq!(
        find("lastcall_shutdown_rejected_while_draining_total", None),
        &DebugValue::Counter(1)
    );
    // Recorded (as zero: no `http::serve` here) so a dashboard's series exists from the start.
    assert_eq!(
        find("lastcall_shutdown_closed_without_request_total", None),
        &DebugValue::Counter(0)
    );
    assert_eq!(
        find(
            "lastcall_shutdown_active_at_deadline",
            Some(("kind", "job"))
        ),
        &DebugValue::Gauge(1.0.into())
    );
    assert_eq!(
        find(
            "lastcall_shutdown_cleanup_failures_total",
            Some(("step", "broker"))
        ),
        &DebugValue::Counter(1)
    );
    let DebugValue::Histogram(wait) = find(
        "lastcall_shutdown_phase_duration_seconds",
        Some(("phase", "wait_for_work")),
    ) else {
        panic!("phase durations are histograms");
    };
    assert_eq!(wait.len(), 1);
}

#[tokio::test]
async fn readiness_withdrawn_by_the_application_comes_back_but_the_shutdown_s_is_final() {
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .drain_delay(Duration::ZERO)
        .build()
        .unwrap();
    let readiness = controller.readiness();
    let health = controller.health().clone();
    let shutdown = controller.shutdown();
    let trigger = controller.trigger();
    let flow = tokio::spawn(controller.run_with_report());
    // `run` marks the service ready once it waits for a trigger.
    while !health.is_ready() {
        tokio::task::yield_now().await;
    }
    readiness.set_not_ready("database unreachable");
    assert!(
        !health.is_ready() && health.is_live(),
        "out of rotation, still alive"
    );
    assert!(
        !shutdown.is_triggered(),
        "a dependency outage is not a shutdown"
    );
    readiness.set_ready();
    assert!(health.is_ready(), "back in rotation");

    trigger.trigger("test");
    shutdown.reached(lastcall::Phase::NotReady).await;
    readiness.set_ready();
    assert!(!health.is_ready(), "the shutdown's not-ready is final");
    let report = flow.await.unwrap();
    assert_eq!(report.exit, lastcall::Exit::Clean);
}

/// `lastcall::Report`, the name the README used before the report types moved to
/// `lastcall::report`, still names the same type for one release.
#[test]
#[allow(deprecated)]
fn the_old_root_report_name_is_the_report() {
    let same = |report: lastcall::Report| -> lastcall::report::Report { report };
    let _ = same;
}
