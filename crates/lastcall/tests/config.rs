use std::time::Duration;

use lastcall::builder::ForceExit;
use lastcall::error::{ConfigError, Origin, Setting};
use lastcall::{Controller, Phase, Signal};

fn build_with(vars: &[(&str, &str)]) -> Result<Controller, ConfigError> {
    Controller::builder()
        .continue_after_run()
        .env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .build()
}

#[tokio::test]
async fn environment_overrides_code_and_accepts_human_durations() {
    let controller = Controller::builder()
        .continue_after_run()
        .budget(Duration::from_secs(60))
        .drain_delay(Duration::from_secs(1))
        .env_vars([
            ("LASTCALL_BUDGET", "25s"),
            ("LASTCALL_DRAIN_DELAY", "1500ms"),
        ])
        .build()
        .expect("valid settings");
    let plan = *controller.shutdown().plan();
    assert_eq!(plan.budget().total, Duration::from_secs(25));
    assert_eq!(
        plan.deadline(Phase::DrainDelay),
        Duration::from_millis(1500)
    );
}

#[tokio::test]
async fn unparsable_duration_names_the_variable_and_the_value() {
    let err = build_with(&[("LASTCALL_DRAIN_DELAY", "five seconds")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::Unparsable { setting: Setting::DrainDelay, ref value, .. } if value == "five seconds")
    );
    let text = err.to_string();
    assert!(
        text.contains("LASTCALL_DRAIN_DELAY=\"five seconds\""),
        "{text}"
    );
    assert!(
        text.contains("\"1500ms\""),
        "the message shows a valid value: {text}"
    );
}

#[tokio::test]
async fn zero_budget_is_rejected_and_says_where_it_came_from() {
    let err = build_with(&[("LASTCALL_BUDGET", "0s")]).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Zero {
            setting: Setting::Budget,
            origin: Origin::Env
        }
    ));
    assert!(err.to_string().contains("greater than zero"), "{err}");

    let err = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .close_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Zero {
            setting: Setting::CloseTimeout,
            origin: Origin::Code
        }
    ));
    assert!(err.to_string().contains("Builder::close_timeout"), "{err}");
}

#[tokio::test]
async fn reserves_larger_than_the_budget_are_rejected_with_the_sum() {
    let err =
        build_with(&[("LASTCALL_BUDGET", "10s"), ("LASTCALL_DRAIN_DELAY", "9s")]).unwrap_err();
    let ConfigError::ReservesExceedBudget { reserved, .. } = &err else {
        panic!("expected ReservesExceedBudget, got {err:?}");
    };
    // 9s drain + the reserves scaled to 10s: 333ms stop + 666ms flush + 1666ms close.
    assert_eq!(*reserved, Duration::from_millis(11_665));
    let text = err.to_string();
    assert!(text.contains("raise the budget above 11s 665ms"), "{text}");
}

#[tokio::test]
async fn unknown_variable_is_rejected_with_a_suggestion() {
    let err = build_with(&[("LASTCALL_BUDGT", "10s")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::UnknownVariable { ref name, suggestion: Some("LASTCALL_BUDGET") } if name == "LASTCALL_BUDGT")
    );
    assert!(
        err.to_string().contains("did you mean LASTCALL_BUDGET?"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_variables_that_are_not_near_misses_are_only_warned_about() {
    // A CI's or another tool's variable under the prefix does not stop the service.
    build_with(&[
        ("LASTCALL_SRC", "/src"),
        ("LASTCALL_TEST_POSTGRES", "postgres://x"),
    ])
    .expect("neighbours are ignored with a warning");
    // Near misses of the prefix are not read (and are warned about).
    let controller = build_with(&[("lastcall_budget", "5s"), ("LAST_CALL_BUDGET", "5s")])
        .expect("not ours, so not an error");
    assert_eq!(
        controller.shutdown().plan().budget().total,
        Duration::from_secs(30)
    );
    Controller::builder()
        .continue_after_run()
        .env_vars([("LASTCALL_DEMO_DB", "/tmp/x.db")])
        .allow_env("LASTCALL_DEMO_DB")
        .build()
        .expect("declared variables are allowed");
    build_with(&[("OTHER_BUDGET", "nonsense")]).expect("other prefixes are not ours");
}

#[tokio::test]
async fn signals_and_force_policy_parse_from_the_environment() {
    let err = build_with(&[("LASTCALL_SIGNALS", "SIGTERM,SIGKILL")]).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            setting: Setting::Signals,
            ..
        }
    ));
    assert!(
        err.to_string().contains("SIGHUP"),
        "lists the valid signals: {err}"
    );

    let err = build_with(&[("LASTCALL_SIGNALS", " , ")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::NoSignals {
                origin: Origin::Env
            }
        ),
        "{err:?}"
    );

    let err = build_with(&[("LASTCALL_FORCE_EXIT", "sometimes")]).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Invalid {
            setting: Setting::ForceExit,
            ..
        }
    ));

    build_with(&[
        ("LASTCALL_SIGNALS", "term hup"),
        // SIGHUP is the restart signal unless another one is chosen.
        ("LASTCALL_RESTART_SIGNAL", "quit"),
        ("LASTCALL_FORCE_EXIT", "second-interrupt"),
    ])
    .expect("valid signal list and policy");
    assert_eq!("on".parse::<ForceExit>(), Ok(ForceExit::SecondInterrupt));
    assert_eq!("quit".parse::<Signal>(), Ok(Signal::Quit));
}

#[tokio::test]
async fn close_reserve_must_leave_room_for_the_report() {
    let err = build_with(&[("LASTCALL_CLOSE_TIMEOUT", "20ms")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::TooShort {
                setting: Setting::CloseTimeout,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::NoRuntime));
    assert_eq!(lastcall::Exit::Config.code(), 78);
}

#[tokio::test]
async fn a_signal_set_without_sigterm_is_refused_with_the_fix() {
    let err = build_with(&[("LASTCALL_SIGNALS", "SIGHUP")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::SigtermNotHandled {
                origin: Origin::Env,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("\"SIGTERM,SIGHUP\""), "{text}");
    build_with(&[
        ("LASTCALL_SIGNALS", "SIGHUP,SIGTERM"),
        ("LASTCALL_RESTART_SIGNAL", "SIGQUIT"),
    ])
    .expect("SIGTERM is in the set");
}

#[tokio::test]
async fn the_restart_signal_cannot_also_stop_the_service() {
    let err = build_with(&[("LASTCALL_SIGNALS", "SIGTERM,SIGHUP")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::RestartSignalConflict {
                restart: Signal::Hangup,
                restart_origin: Origin::Default,
                signals_origin: Origin::Env,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.setting(), Some(Setting::RestartSignal));
    let text = err.to_string();
    assert!(
        text.contains("LASTCALL_RESTART_SIGNAL (default) is SIGHUP")
            && text.contains("LASTCALL_SIGNALS (SIGTERM,SIGHUP)"),
        "{text}"
    );
    let err = build_with(&[("LASTCALL_RESTART_TIMEOUT", "0s")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Zero {
                setting: Setting::RestartTimeout,
                ..
            }
        ),
        "{err:?}"
    );
    let err = build_with(&[("LASTCALL_RESTART_SIGNAL", "SIGKILL")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                setting: Setting::RestartSignal,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("or off"),
        "the error names the way to turn it off: {err}"
    );
}

#[tokio::test]
async fn the_restart_signal_can_be_sigusr2_or_off() {
    build_with(&[("LASTCALL_RESTART_SIGNAL", "SIGUSR2")]).expect("SIGUSR2 restarts");
    // SIGUSR2 as a shutdown signal too is the same conflict as SIGHUP's.
    let err = build_with(&[
        ("LASTCALL_SIGNALS", "SIGTERM,SIGUSR2"),
        ("LASTCALL_RESTART_SIGNAL", "usr2"),
    ])
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::RestartSignalConflict {
                restart: Signal::User2,
                ..
            }
        ),
        "{err:?}"
    );
    // Off: SIGHUP is free for the shutdown set (or the service's own handler).
    build_with(&[
        ("LASTCALL_SIGNALS", "SIGTERM,SIGHUP"),
        ("LASTCALL_RESTART_SIGNAL", "off"),
    ])
    .expect("no restart signal, no conflict");
    Controller::builder()
        .ignore_env()
        .signals([Signal::Terminate, Signal::Hangup])
        .without_restart_signal()
        .continue_after_run()
        .build()
        .expect("the same from code");
}

#[tokio::test]
async fn absurd_durations_from_the_environment_are_refused_at_startup() {
    for value in [
        "9223372036854775807s",
        "18446744073709551615s",
        "500000000000y",
        "400days",
    ] {
        match build_with(&[("LASTCALL_BUDGET", value)]) {
            Err(ConfigError::TooLong {
                setting: Setting::Budget,
                ..
            })
            | Err(ConfigError::Unparsable {
                setting: Setting::Budget,
                ..
            }) => {}
            other => panic!("LASTCALL_BUDGET={value}: {other:?}"),
        }
    }
    let err = build_with(&[("LASTCALL_STOP_TIMEOUT", "1ns")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::TooShort {
                setting: Setting::StopTimeout,
                ..
            }
        ),
        "{err:?}"
    );
    // A budget alone, as small as Docker's default stop timeout allows, works.
    let controller = build_with(&[("LASTCALL_BUDGET", "8s")]).expect("a budget alone is valid");
    let plan = *controller.shutdown().plan();
    assert_eq!(
        plan.deadline(Phase::WaitForWork),
        Duration::from_millis(6_134)
    );
}

/// Collects what `tracing` logs while `f` runs on this thread.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn near_misses_of_the_prefix_and_unknown_names_are_named_in_a_warning() {
    let log = logged(|| {
        build_with(&[("LASTCAL_BUDGET", "5s"), ("LASTCALL_SRC", "/src")]).expect("warnings only");
    });
    assert!(
        log.contains("LASTCAL_BUDGET is not read: did you mean LASTCALL_BUDGET?"),
        "{log}"
    );
    assert!(
        log.contains("LASTCALL_SRC is not a lastcall setting and is ignored"),
        "{log}"
    );
}
