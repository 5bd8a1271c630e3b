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
        let valid = !zero && budget.close_dependencies > ms(50) && reserved < budget.total;
        match budget.plan() {
            Ok(_) => prop_assert!(valid),
            Err(ConfigError::Zero { .. }) => prop_assert!(zero),
            Err(ConfigError::TooShort { .. }) => prop_assert!(!zero && budget.close_dependencies <= ms(50)),
            Err(ConfigError::ReservesExceedBudget { reserved: r, .. }) => {
                prop_assert_eq!(r, reserved);
                prop_assert!(reserved >= budget.total);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
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
