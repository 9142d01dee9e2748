//! Dispatcher routing logic against mockall mocks of `Notifier`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_notify::{Dispatcher, RetryPolicy, SkipReason};
use mesh_notify_core::{
    AddressKind, Composer, ErrorClass, Health, Kind, Notification, Notifier, NotifyError, Receipt,
    Recipient, Room, Timestamp,
};
use mockall::mock;

mock! {
    pub Provider {}
    #[async_trait::async_trait]
    impl Notifier for Provider {
        fn name(&self) -> &str;
        fn describe(&self) -> String;
        fn can_reach(&self, n: &Notification) -> bool;
        async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError>;
        async fn health(&self) -> Health;
    }
}

fn provider(name: &'static str) -> MockProvider {
    let mut p = MockProvider::new();
    p.expect_name().return_const(name.to_string());
    p.expect_can_reach().return_const(true);
    p
}

fn ok(name: &'static str) -> impl Fn(&Notification) -> Result<Receipt, NotifyError> {
    move |_| {
        Ok(Receipt {
            provider: name.into(),
            message_id: Some("m1".into()),
            latency: Duration::from_millis(1),
        })
    }
}

fn chat() -> Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("r", "Room"),
        Recipient::new("bob", "Bob"),
        "hi",
    )
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts_per_provider: 2,
        initial_delay: Duration::from_millis(1),
        max_inline_wait: Duration::from_millis(50),
        send_timeout: Duration::from_secs(5),
    }
}

fn dispatcher(primary: MockProvider, fallback: MockProvider) -> Dispatcher {
    Dispatcher::builder()
        .notifier(Arc::new(primary))
        .notifier(Arc::new(fallback))
        .route(Kind::Chat, ["primary", "fallback"])
        .policy(fast_policy())
        .build()
        .unwrap()
}

#[tokio::test]
async fn primary_ok_never_calls_the_fallback() {
    let mut primary = provider("primary");
    primary.expect_send().times(1).returning(ok("primary"));
    let mut fallback = provider("fallback");
    fallback.expect_send().times(0);
    let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "primary");
    assert_eq!(outcome.attempts.len(), 1);
    assert!(!outcome.used_fallback());
}

#[tokio::test]
async fn transient_primary_is_retried_then_falls_back() {
    let mut primary = provider("primary");
    primary
        .expect_send()
        .times(2)
        .returning(|_| Err(NotifyError::transient("503")));
    let mut fallback = provider("fallback");
    fallback.expect_send().times(1).returning(ok("fallback"));
    let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "fallback");
    assert!(outcome.used_fallback());
    let tries: Vec<_> = outcome
        .attempts
        .iter()
        .map(|a| (a.provider.as_str(), a.try_number, a.error_class))
        .collect();
    assert_eq!(
        tries,
        [
            ("primary", 1, Some(ErrorClass::Transient)),
            ("primary", 2, Some(ErrorClass::Transient)),
            ("fallback", 1, None)
        ]
    );
}

#[tokio::test]
async fn transient_then_success_stays_on_the_primary() {
    let mut primary = provider("primary");
    let mut calls = 0;
    primary.expect_send().times(2).returning(move |n| {
        calls += 1;
        if calls == 1 {
            Err(NotifyError::transient("blip"))
        } else {
            ok("primary")(n)
        }
    });
    let mut fallback = provider("fallback");
    fallback.expect_send().times(0);
    let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "primary");
}

#[tokio::test]
async fn permanent_and_misconfigured_move_on_without_retry() {
    for err in [
        NotifyError::permanent("400"),
        NotifyError::misconfigured("401"),
    ] {
        let mut primary = provider("primary");
        let e = err.clone();
        primary
            .expect_send()
            .times(1)
            .returning(move |_| Err(e.clone()));
        let mut fallback = provider("fallback");
        fallback.expect_send().times(1).returning(ok("fallback"));
        let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
        assert_eq!(outcome.delivered.as_ref().unwrap().provider, "fallback");
        assert_eq!(outcome.attempts[0].error_class, Some(err.class()));
    }
}

#[tokio::test]
async fn all_failing_records_every_attempt_and_does_not_panic() {
    let mut primary = provider("primary");
    primary
        .expect_send()
        .times(2)
        .returning(|_| Err(NotifyError::transient("down")));
    let mut fallback = provider("fallback");
    fallback
        .expect_send()
        .times(1)
        .returning(|_| Err(NotifyError::permanent("nope")));
    let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
    assert!(!outcome.is_delivered());
    assert_eq!(outcome.attempts.len(), 3);
    assert!(outcome.attempts.iter().all(|a| a.error.is_some()));
    let summary = outcome.failure_summary();
    assert!(
        summary.contains("primary try 2") && summary.contains("nope"),
        "{summary}"
    );
}

#[tokio::test]
async fn recipient_gone_is_reported_and_moves_on() {
    let mut primary = provider("primary");
    primary
        .expect_send()
        .times(1)
        .returning(|_| Err(NotifyError::gone(AddressKind::Fcm, "UNREGISTERED")));
    let mut fallback = provider("fallback");
    fallback.expect_send().times(1).returning(ok("fallback"));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let seen = dead.clone();
    let d = Dispatcher::builder()
        .notifier(Arc::new(primary))
        .notifier(Arc::new(fallback))
        .route(Kind::Chat, ["primary", "fallback"])
        .policy(fast_policy())
        .on_dead_address(move |a| seen.lock().unwrap().push(a))
        .build()
        .unwrap();
    let outcome = d.dispatch(chat()).await;
    assert!(outcome.is_delivered());
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].user_id, "bob");
    assert_eq!(dead[0].kind, AddressKind::Fcm);
    assert_eq!(dead[0].provider, "primary");
}

#[tokio::test]
async fn long_retry_after_falls_back_instead_of_waiting() {
    let mut primary = provider("primary");
    primary.expect_send().times(1).returning(|_| {
        Err(NotifyError::Transient {
            reason: "429".into(),
            retry_after: Some(Duration::from_secs(60)),
        })
    });
    let mut fallback = provider("fallback");
    fallback.expect_send().times(1).returning(ok("fallback"));
    let outcome = dispatcher(primary, fallback).dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "fallback");
    assert_eq!(outcome.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_provider_is_cut_off_by_the_send_timeout() {
    struct Hung;
    #[async_trait::async_trait]
    impl Notifier for Hung {
        fn name(&self) -> &str {
            "hung"
        }
        async fn send(&self, _: &Notification) -> Result<Receipt, NotifyError> {
            std::future::pending().await
        }
        async fn health(&self) -> Health {
            Health::Healthy
        }
    }
    let mut fallback = provider("fallback");
    fallback.expect_send().times(1).returning(ok("fallback"));
    let d = Dispatcher::builder()
        .notifier(Arc::new(Hung))
        .notifier(Arc::new(fallback))
        .route(Kind::Chat, ["hung", "fallback"])
        .policy(RetryPolicy {
            attempts_per_provider: 1,
            send_timeout: Duration::from_secs(5),
            ..fast_policy()
        })
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = d.dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "fallback");
    assert_eq!(outcome.attempts[0].error_class, Some(ErrorClass::Transient));
    assert!(outcome.attempts[0]
        .error
        .as_ref()
        .unwrap()
        .contains("did not answer"));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_and_disabled_providers_are_skipped() {
    let mut primary = MockProvider::new();
    primary.expect_name().return_const("primary".to_string());
    primary.expect_can_reach().return_const(false);
    primary.expect_send().times(0);
    let mut fallback = provider("fallback");
    fallback.expect_send().times(1).returning(ok("fallback"));
    let d = Dispatcher::builder()
        .notifier(Arc::new(primary))
        .notifier(Arc::new(fallback))
        .disabled("gotify")
        .route(Kind::Chat, ["gotify", "primary", "fallback"])
        .build()
        .unwrap();
    let outcome = d.dispatch(chat()).await;
    assert_eq!(outcome.delivered.as_ref().unwrap().provider, "fallback");
    let skipped: Vec<(&str, SkipReason)> = outcome
        .skipped
        .iter()
        .map(|s| (s.provider.as_str(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("gotify", SkipReason::NotConfigured),
            ("primary", SkipReason::NoAddress)
        ]
    );
}

#[tokio::test]
async fn an_expired_notification_is_never_sent() {
    let mut primary = provider("primary");
    primary.expect_send().times(0);
    let mut fallback = provider("fallback");
    fallback.expect_send().times(0);
    let mut n = chat();
    n.expires_at = Some(Timestamp(Timestamp::now().as_millis() - 1));
    let outcome = dispatcher(primary, fallback).dispatch(n).await;
    assert!(outcome.expired);
    assert!(!outcome.is_delivered());
}

#[test]
fn a_route_naming_an_unknown_provider_is_a_build_error() {
    let err = Dispatcher::builder()
        .notifier(Arc::new(provider("primary")))
        .disabled("gotify")
        .route(Kind::Call, ["primary", "pigeon"])
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("routes.call") && msg.contains("pigeon"),
        "{msg}"
    );
    assert!(msg.contains("gotify, primary"), "{msg}");
}

#[test]
fn zero_attempts_is_refused() {
    let err = Dispatcher::builder()
        .policy(RetryPolicy {
            attempts_per_provider: 0,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("attempts_per_provider"));
}

#[tokio::test]
async fn a_probe_skipped_by_the_rate_limiter_is_not_lost() {
    let calls = Arc::new(Mutex::new(0u32));
    let counted = calls.clone();
    let mut p = provider("primary");
    p.expect_send().returning(move |_| {
        let mut c = counted.lock().unwrap();
        *c += 1;
        if *c == 1 {
            Err(NotifyError::transient("503"))
        } else {
            ok("primary")(&chat())
        }
    });
    let d = Dispatcher::builder()
        .notifier(Arc::new(p))
        .route(Kind::Chat, ["primary"])
        .policy(RetryPolicy {
            attempts_per_provider: 1,
            ..fast_policy()
        })
        .breaker(mesh_notify::BreakerConfig {
            failure_threshold: 1,
            probe_interval: Duration::from_millis(20),
            probe_max_interval: Duration::from_millis(20),
        })
        .rate_limit(
            "primary",
            mesh_notify::RateLimitConfig {
                per_second: 2.0,
                burst: 1,
            },
        )
        .build()
        .unwrap();
    // The only token goes to the first send, which fails and opens the circuit.
    assert!(!d.dispatch(chat()).await.is_delivered());
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Probe due, but the rate limiter has no token within max_inline_wait.
    let o = d.dispatch(chat()).await;
    assert_eq!(o.skipped[0].reason, SkipReason::RateLimited, "{o:?}");
    // Once a token is back, the next caller gets the probe (not "circuit open").
    tokio::time::sleep(Duration::from_millis(600)).await;
    let o = d.dispatch(chat()).await;
    assert!(o.is_delivered(), "the probe was not lost: {o:?}");
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test]
async fn dispatch_does_not_queue_what_every_provider_refused_for_good() {
    let mut primary = provider("primary");
    primary
        .expect_send()
        .returning(|_| Err(NotifyError::permanent("400 bad request")));
    let mut fallback = provider("fallback");
    fallback
        .expect_send()
        .returning(|_| Err(NotifyError::permanent("413 too large")));
    let outbox = mesh_notify_core::testing::MemoryOutbox::new();
    let d = Dispatcher::builder()
        .notifier(Arc::new(primary))
        .notifier(Arc::new(fallback))
        .route(Kind::Chat, ["primary", "fallback"])
        .policy(fast_policy())
        .outbox(Arc::new(outbox.clone()))
        .build()
        .unwrap();
    let o = d.dispatch(chat()).await;
    assert!(!o.is_delivered() && !o.queued, "{o:?}");
    assert!(
        o.failure_summary().contains("400"),
        "{}",
        o.failure_summary()
    );
    use mesh_notify_core::Outbox;
    assert_eq!(outbox.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn the_dead_address_hook_fires_once_and_the_dead_address_is_not_retried() {
    let mut primary = provider("primary");
    primary
        .expect_send()
        .times(1)
        .returning(|_| Err(NotifyError::gone(AddressKind::Fcm, "UNREGISTERED")));
    let mut fallback = provider("fallback");
    fallback.expect_send().times(2).returning(ok("fallback"));
    let dead = Arc::new(Mutex::new(0));
    let seen = dead.clone();
    let d = Dispatcher::builder()
        .notifier(Arc::new(primary))
        .notifier(Arc::new(fallback))
        .route(Kind::Chat, ["primary", "fallback"])
        .policy(fast_policy())
        .on_dead_address(move |_| *seen.lock().unwrap() += 1)
        .build()
        .unwrap();
    let bob = Recipient::new("bob", "Bob").with_address(mesh_notify_core::Address::new(
        AddressKind::Fcm,
        "dead-token",
    ));
    let n = || Composer::default().chat("Alice", &Room::new("r", "Room"), bob.clone(), "hi");
    assert!(d.dispatch(n()).await.is_delivered());
    // A queued copy that still carries the dead token: not tried with it again.
    let o = d.dispatch(n()).await;
    assert!(o.is_delivered());
    assert_eq!(o.skipped[0].reason, SkipReason::NoAddress, "{o:?}");
    assert_eq!(*dead.lock().unwrap(), 1, "the hook fires once per address");
}

mock! {
    pub Devices {}
    #[async_trait::async_trait]
    impl Notifier for Devices {
        fn name(&self) -> &str;
        fn can_reach(&self, n: &Notification) -> bool;
        fn address_kind(&self, n: &Notification) -> Option<AddressKind>;
        async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError>;
        async fn health(&self) -> Health;
    }
}

/// Bob has three FCM devices: each gets its own send (its own address, an id per
/// (notification, device)); one delivered → the provider delivered; the dead one
/// is reported once; the failing one is left for a follow-up.
#[tokio::test]
async fn every_device_gets_its_own_send_and_result() {
    let mut fcm = MockDevices::new();
    fcm.expect_name().return_const("fcm".to_string());
    fcm.expect_can_reach().return_const(true);
    fcm.expect_address_kind()
        .return_const(Some(AddressKind::Fcm));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    fcm.expect_send().times(3).returning(move |n| {
        let tokens: Vec<String> = n
            .recipient
            .addresses
            .iter()
            .filter(|a| a.kind == AddressKind::Fcm)
            .map(|a| a.value.expose().to_owned())
            .collect();
        assert_eq!(tokens.len(), 1, "one device per send");
        log.lock().unwrap().push((n.id, tokens[0].clone()));
        match tokens[0].as_str() {
            "tok-phone" => ok("fcm")(n),
            "tok-old" => Err(NotifyError::gone(AddressKind::Fcm, "UNREGISTERED")),
            _ => Err(NotifyError::transient("503 UNAVAILABLE")),
        }
    });
    let dead = Arc::new(Mutex::new(Vec::new()));
    let seen = dead.clone();
    let d = Dispatcher::builder()
        .notifier(Arc::new(fcm))
        .route(Kind::Chat, ["fcm"])
        .policy(RetryPolicy {
            attempts_per_provider: 1,
            ..fast_policy()
        })
        .on_dead_address(move |a| seen.lock().unwrap().push(a))
        .build()
        .unwrap();
    let mut bob = Recipient::new("bob", "Bob");
    for t in ["tok-phone", "tok-old", "tok-tablet"] {
        bob = bob.with_address(mesh_notify_core::Address::new(AddressKind::Fcm, t));
    }
    let n = Composer::default().chat("Alice", &Room::new("r", "Room"), bob, "hi");
    let o = d.dispatch(n.clone()).await;
    assert!(o.is_delivered(), "{o:?}");
    assert_eq!(o.devices.len(), 3);
    assert_eq!(o.devices.iter().filter(|x| x.delivered).count(), 1);
    let ids: std::collections::HashSet<_> =
        sent.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids.len(),
        3,
        "an idempotency key per (notification, device)"
    );
    assert!(!ids.contains(&n.id));
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].address.as_ref().map(|s| s.expose()),
        Some("tok-old")
    );
    assert_eq!(o.pending_devices.len(), 1);
    assert_eq!(o.pending_devices[0].1.value.expose(), "tok-tablet");
    let json = serde_json::to_string(&o).unwrap();
    assert!(
        !json.contains("tok-"),
        "no token in the outcome's JSON: {json}"
    );
}
