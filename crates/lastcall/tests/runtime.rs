//! `lastcall::runtime::block_on` on both runtime flavours: output and panics reach the caller.

use std::time::Duration;

use lastcall::runtime::{block_on, Teardown};

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn main_s_output_is_returned_on_both_flavours() {
    for runtime in [multi_thread(), current_thread()] {
        let out = block_on(runtime, Teardown::default(), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            String::from("done")
        });
        assert_eq!(out, "done");
    }
}

#[test]
fn a_panic_in_main_reaches_the_caller_of_block_on() {
    for runtime in [multi_thread(), current_thread()] {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(runtime, Teardown::default(), async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                panic!("main gave up");
            })
        }));
        let payload = caught.expect_err("the panic reaches the caller");
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned());
        assert_eq!(message.as_deref(), Some("main gave up"));
    }
}

#[test]
fn block_on_runs_again_after_a_first_one_has_returned() {
    // The first call hosted the clock and the watchdog; the second hosts them afresh, and
    // a controller's flow runs through both.
    for _ in 0..2 {
        let code = block_on(multi_thread(), Teardown::default(), async {
            let controller = lastcall::Controller::builder()
                .continue_after_run()
                .drain_delay(Duration::ZERO)
                .build()
                .unwrap();
            let shutdown = controller.shutdown();
            let guard = shutdown.tracker().job("short");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                drop(guard);
            });
            controller.trigger().fatal("test");
            controller.run_with_report().await
        });
        assert_eq!(code.exit, lastcall::Exit::Fatal);
        assert!(code.work_at_deadline.is_none());
    }
}
