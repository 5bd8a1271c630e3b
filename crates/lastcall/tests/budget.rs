use std::time::Duration;

use lastcall::error::ConfigError;
use lastcall::{Budget, Phase};
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

prop_compose! {
    fn any_budget()(
        total in 1u64..120_000,
        drain in 0u64..60_000,
        stop in 0u64..10_000,
        flush in 0u64..10_000,
        close in 0u64..20_000,
    ) -> Budget {
        Budget::new(ms(total))
            .with_drain_delay(ms(drain))
            .with_stop_accepting(ms(stop))
            .with_flush_telemetry(ms(flush))
            .with_close_dependencies(ms(close))
    }
}

proptest! {
    #[test]
    fn valid_budgets_give_ordered_disjoint_windows_inside_the_budget(budget in any_budget()) {
        let Ok(plan) = budget.plan() else { return Ok(()) };
        let windows: Vec<_> = plan.windows().collect();
        prop_assert_eq!(windows.first().map(|w| w.phase), Some(Phase::NotReady));
        prop_assert_eq!(windows.last().map(|w| w.phase), Some(Phase::Exit));
        for w in &windows {
            prop_assert!(w.start <= w.end, "{:?} ends before it starts", w);
            prop_assert!(w.end <= budget.total, "{:?} ends after the budget", w);
        }
        for pair in windows.windows(2) {
            prop_assert!(pair[0].end <= pair[1].start, "{:?} overlaps {:?}", pair[0], pair[1]);
        }
        prop_assert_eq!(plan.deadline(Phase::Exit), budget.total);
    }

    #[test]
    fn every_later_phase_keeps_its_reserve(budget in any_budget()) {
        let Ok(plan) = budget.plan() else { return Ok(()) };
        // Whatever the earlier phases do, the time after each deadline covers the reserves of
        // the phases that follow it.
        let after = |p| budget.total - plan.deadline(p);
        prop_assert!(after(Phase::WaitForWork) >= budget.flush_telemetry + budget.close_dependencies);
        prop_assert!(after(Phase::FlushTelemetry) >= budget.close_dependencies);
        prop_assert_eq!(plan.deadline(Phase::DrainDelay), budget.drain_delay);
        prop_assert!(plan.deadline(Phase::StopAccepting) - plan.deadline(Phase::DrainDelay) <= budget.stop_accepting);
        prop_assert!(plan.deadline(Phase::WaitForWork) > plan.window(Phase::WaitForWork).start,
            "waiting for work gets some time");
    }

    #[test]
    fn a_budget_is_rejected_exactly_when_it_is_inconsistent(budget in any_budget()) {
        let reserved = budget.drain_delay + budget.stop_accepting + budget.flush_telemetry
            + budget.close_dependencies;
        let zero = [budget.total, budget.stop_accepting, budget.flush_telemetry, budget.close_dependencies]
            .iter().any(Duration::is_zero);
        let short = budget.total < ms(1000) || budget.close_dependencies < ms(100)
            || budget.stop_accepting < ms(1) || budget.flush_telemetry < ms(1);
        let valid = !zero && !short && reserved < budget.total;
        match budget.plan() {
            Ok(_) => prop_assert!(valid),
            Err(ConfigError::Zero { .. }) => prop_assert!(zero),
            Err(ConfigError::TooShort { .. }) => prop_assert!(!zero && short),
            Err(ConfigError::ReservesExceedBudget { reserved: r, .. }) => {
                prop_assert_eq!(r, reserved);
                prop_assert!(reserved >= budget.total);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn any_budget_from_a_second_to_a_day_is_valid_alone(total in 1_000u64..86_400_000) {
        let budget = Budget::new(ms(total));
        let plan = budget.plan().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let reserves = budget.stop_accepting + budget.flush_telemetry + budget.close_dependencies;
        // The unset reserves keep at most 30 % of the budget; waiting for work gets the rest.
        prop_assert!(reserves * 10 <= budget.total * 3, "{:?}", budget);
        prop_assert!(reserves <= Duration::from_secs(8));
        prop_assert!(plan.deadline(Phase::WaitForWork) >= budget.total * 7 / 10);
    }
}

#[test]
fn unset_reserves_keep_their_defaults_from_thirty_seconds_and_shrink_below() {
    let secs = Duration::from_secs;
    assert_eq!(Budget::new(secs(30)), Budget::default());
    assert_eq!(Budget::new(secs(90)).close_dependencies, secs(5));
    let ten = Budget::new(secs(10));
    assert_eq!(
        (
            ten.stop_accepting,
            ten.flush_telemetry,
            ten.close_dependencies
        ),
        (ms(333), ms(666), ms(1666))
    );
    // A set reserve is kept as set, the others still scale.
    let set = Budget::from_settings(secs(10), secs(1), None, Some(secs(3)), None);
    assert_eq!(
        (set.flush_telemetry, set.close_dependencies),
        (secs(3), ms(1666))
    );
}

#[test]
fn absurd_durations_are_refused_naming_the_limit() {
    for total in [
        Duration::from_secs(9_223_372_036_854_775_807),
        Duration::MAX,
        Duration::from_secs(366 * 24 * 3600),
    ] {
        let err = Budget::new(total).plan().unwrap_err();
        assert!(matches!(err, ConfigError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("at most 1day"), "{err}");
    }
    let err = Budget::new(Duration::from_secs(10))
        .with_stop_accepting(Duration::from_nanos(1))
        .plan()
        .unwrap_err();
    assert!(matches!(err, ConfigError::TooShort { .. }), "{err}");
    let err = Budget::new(ms(500)).plan().unwrap_err();
    assert!(err.to_string().contains("at least 1s"), "{err}");
}

#[test]
fn default_budget_gives_the_documented_windows() {
    let plan = Budget::default()
        .plan()
        .expect("the default budget is valid");
    assert_eq!(plan.deadline(Phase::DrainDelay), Duration::ZERO);
    assert_eq!(plan.deadline(Phase::StopAccepting), Duration::from_secs(1));
    assert_eq!(plan.deadline(Phase::WaitForWork), Duration::from_secs(23));
    assert_eq!(
        plan.deadline(Phase::FlushTelemetry),
        Duration::from_secs(25)
    );
    assert_eq!(plan.deadline(Phase::CloseDependencies), ms(29_950));
    assert_eq!(plan.deadline(Phase::Exit), Duration::from_secs(30));
}
