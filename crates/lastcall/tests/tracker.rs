use std::time::Duration;

use lastcall::{Tracker, WorkKind};

#[test]
fn guards_count_once_and_snapshots_list_labels_oldest_first() {
    let tracker = Tracker::new();
    let a = tracker.request("GET /orders/1");
    std::thread::sleep(Duration::from_millis(30));
    let b = tracker.job(format!("orders:{}", 42));
    let active = tracker.active();
    assert_eq!(active.count, 2);
    assert_eq!(active.items[0].label, "GET /orders/1", "oldest first");
    assert_eq!(active.items[0].kind, WorkKind::Request);
    assert_eq!(active.items[1].label, "orders:42");
    // Ages come from the coarse clock: exact to a few milliseconds.
    assert!(
        active.oldest >= Some(Duration::from_millis(20)),
        "{:?}",
        active.oldest
    );
    assert_eq!(active.by_kind.request, 1);
    assert_eq!(active.by_kind.job, 1);
    drop(a);
    assert_eq!(tracker.len(), 1);
    drop(b);
    assert!(tracker.is_empty());
    assert_eq!(tracker.active().oldest, None);
}

#[test]
fn snapshots_keep_the_full_count_when_trimmed() {
    let tracker = Tracker::new();
    let guards: Vec<_> = (0..10).map(|i| tracker.task(format!("task-{i}"))).collect();
    let active = tracker.active().keep_oldest(3);
    assert_eq!(active.count, 10);
    assert_eq!(active.items.len(), 3);
    assert!(active.to_string().ends_with("and 7 more"), "{active}");
    drop(guards);
}

#[tokio::test(start_paused = true)]
async fn wait_idle_stays_pending_while_any_work_remains() {
    let tracker = Tracker::new();
    let guard = tracker.stream("GET /events");
    let waited = tokio::time::timeout(Duration::from_secs(3600), tracker.wait_idle()).await;
    assert!(
        waited.is_err(),
        "an hour later the stream still holds it open"
    );
    drop(guard);
    tokio::time::timeout(Duration::from_millis(1), tracker.wait_idle())
        .await
        .expect("idle once the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_idle_wakes_when_the_last_of_many_guards_drops_on_other_threads() {
    let tracker = Tracker::new();
    let mut threads = Vec::new();
    for t in 0..4 {
        let guards: Vec<_> = (0..250)
            .map(|i| tracker.request(format!("t{t}-{i}")))
            .collect();
        threads.push(std::thread::spawn(move || {
            for guard in guards {
                std::thread::yield_now();
                drop(guard);
            }
        }));
    }
    let idle = tracker.wait_idle();
    // Bounded only so a lost wake-up fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), idle)
        .await
        .expect("woken by the last drop");
    assert!(tracker.is_empty());
    for t in threads {
        t.join().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_wait_does_not_leave_a_watcher_behind() {
    let tracker = Tracker::new();
    let guard = tracker.task("tick");
    let mut wait = tracker.wait_idle();
    // Polled once (a zero timeout polls it before giving up), so it registered as a watcher.
    let polled = tokio::time::timeout(Duration::ZERO, &mut wait).await;
    assert!(polled.is_err(), "the task still runs");
    assert!(
        format!("{tracker:?}").contains("watchers: 1"),
        "{tracker:?}"
    );
    drop(wait);
    assert!(
        format!("{tracker:?}").contains("watchers: 0"),
        "{tracker:?}"
    );
    let pending = tracker.wait_idle();
    drop(guard);
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("a later wait still wakes");
}
