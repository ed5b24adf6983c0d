//! The exported surface exercised from Rust, exactly as the foreign
//! bindings call it: ordering, back-pressure, the one-consumer rule,
//! listener delivery and cancellation, typed errors, and redaction of
//! message bodies in `Debug` output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sotto_ffi::{
    Event, EventListener, MessageQueue, ReceivedMessage, SottoError, MAX_MESSAGE_BYTES,
};

/// A listener that forwards events to the test thread.
struct Forward(Mutex<std_mpsc::Sender<Event>>);

impl EventListener for Forward {
    fn on_event(&self, event: Event) -> Result<(), SottoError> {
        self.0.lock().unwrap().send(event).unwrap();
        Ok(())
    }
}

fn forwarding() -> (Arc<Forward>, std_mpsc::Receiver<Event>) {
    let (tx, rx) = std_mpsc::channel();
    (Arc::new(Forward(Mutex::new(tx))), rx)
}

fn recv(rx: &std_mpsc::Receiver<Event>) -> Event {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no event within 10 s")
}

#[tokio::test]
async fn messages_come_out_in_order_with_gap_free_sequences() {
    let queue = MessageQueue::new(8).unwrap();
    for i in 0..5u8 {
        assert_eq!(
            queue.send(vec![i; usize::from(i)]).await.unwrap(),
            u64::from(i)
        );
    }
    queue.end();
    for i in 0..5u8 {
        let msg = queue.next().await.unwrap().unwrap();
        assert_eq!(msg.sequence, u64::from(i));
        assert_eq!(msg.body, vec![i; usize::from(i)]);
    }
    assert_eq!(queue.next().await.unwrap(), None);
    assert_eq!(queue.sent(), 5);
}

#[tokio::test]
async fn limits_and_misuse_are_typed_errors() {
    assert!(matches!(
        MessageQueue::new(0),
        Err(SottoError::InvalidInput { .. })
    ));
    assert!(matches!(
        MessageQueue::new(u32::MAX),
        Err(SottoError::InvalidInput { .. })
    ));
    let queue = MessageQueue::new(1).unwrap();
    let too_big = vec![0u8; MAX_MESSAGE_BYTES as usize + 1];
    assert_eq!(
        queue.try_send(too_big.clone()),
        Err(SottoError::TooLarge {
            size: MAX_MESSAGE_BYTES + 1,
            limit: MAX_MESSAGE_BYTES
        })
    );
    assert!(matches!(
        queue.send(too_big).await,
        Err(SottoError::TooLarge { .. })
    ));
    assert!(queue.try_send(vec![0; MAX_MESSAGE_BYTES as usize]).is_ok());
    assert!(matches!(
        queue.try_send(vec![1]),
        Err(SottoError::Busy { .. })
    ));
    assert!(matches!(
        queue.next_batch(0).await,
        Err(SottoError::InvalidInput { .. })
    ));
    queue.end();
    assert_eq!(queue.try_send(vec![1]), Err(SottoError::Closed));
    assert_eq!(queue.send(vec![1]).await, Err(SottoError::Closed));
}

#[tokio::test]
async fn a_cancelled_send_enqueues_nothing_and_a_cancelled_next_loses_nothing() {
    let queue = MessageQueue::new(1).unwrap();
    queue.try_send(vec![1]).unwrap();
    let blocked = tokio::time::timeout(Duration::from_millis(20), queue.send(vec![2])).await;
    assert!(blocked.is_err(), "send on a full queue must wait");
    assert_eq!(queue.next().await.unwrap().unwrap().sequence, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), queue.next())
            .await
            .is_err()
    );
    assert_eq!(
        queue.try_send(vec![3]).unwrap(),
        1,
        "the cancelled send took no number"
    );
    assert_eq!(queue.next().await.unwrap().unwrap().body, vec![3]);
}

#[tokio::test]
async fn next_batch_takes_what_is_buffered() {
    let queue = MessageQueue::new(64).unwrap();
    for i in 0..10u8 {
        queue.try_send(vec![i]).unwrap();
    }
    let batch = queue.next_batch(4).await.unwrap();
    assert_eq!(
        batch.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    queue.end();
    assert_eq!(queue.next_batch(100).await.unwrap().len(), 6);
    assert!(queue.next_batch(100).await.unwrap().is_empty());
}

#[test]
fn a_listener_gets_every_message_then_closed() {
    let queue = MessageQueue::new(4).unwrap();
    let (listener, events) = forwarding();
    let sub = queue.subscribe(listener).unwrap();
    for i in 0..50u64 {
        // try_send from a plain thread: spin while the listener catches up.
        while matches!(
            queue.try_send(i.to_be_bytes().to_vec()),
            Err(SottoError::Busy { .. })
        ) {
            std::thread::yield_now();
        }
    }
    queue.end();
    for i in 0..50u64 {
        match recv(&events) {
            Event::Message { message } => {
                assert_eq!(message.sequence, i);
                assert_eq!(message.body, i.to_be_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(recv(&events), Event::Closed);
    for _ in 0..1000 {
        if !sub.is_active() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!sub.is_active());
    assert_eq!(sub.delivered(), 51);
}

#[tokio::test]
async fn one_consumer_at_a_time_and_cancel_frees_the_stream_at_once() {
    let queue = MessageQueue::new(4).unwrap();
    let (listener, events) = forwarding();
    let sub = queue.subscribe(listener.clone()).unwrap();
    assert!(matches!(
        queue.subscribe(listener),
        Err(SottoError::Busy { .. })
    ));
    assert!(matches!(queue.next().await, Err(SottoError::Busy { .. })));
    sub.cancel();
    sub.cancel();
    assert!(!sub.is_active());
    queue.try_send(b"after".to_vec()).unwrap();
    // Not delivered to the cancelled listener, but to the next reader.
    let msg = tokio::time::timeout(Duration::from_secs(10), queue.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.body, b"after");
    assert!(events.try_recv().is_err());
}

#[test]
fn dropping_the_subscription_handle_cancels_it() {
    let queue = MessageQueue::new(4).unwrap();
    let (listener, events) = forwarding();
    drop(queue.subscribe(listener).unwrap());
    queue.try_send(vec![1]).unwrap();
    assert!(events.recv_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn a_failing_listener_is_counted_and_delivery_continues() {
    struct FailFirst(Mutex<(bool, std_mpsc::Sender<u64>)>);
    impl EventListener for FailFirst {
        fn on_event(&self, event: Event) -> Result<(), SottoError> {
            let mut state = self.0.lock().unwrap();
            if let Event::Message { message } = event {
                state.1.send(message.sequence).unwrap();
                if !state.0 {
                    state.0 = true;
                    return Err(SottoError::Listener {
                        reason: "app bug".to_owned(),
                    });
                }
            }
            Ok(())
        }
    }
    let (tx, rx) = std_mpsc::channel();
    let queue = MessageQueue::new(4).unwrap();
    let sub = queue
        .subscribe(Arc::new(FailFirst(Mutex::new((false, tx)))))
        .unwrap();
    queue.try_send(vec![1]).unwrap();
    queue.try_send(vec![2]).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    assert_eq!(sub.listener_failures(), 1);
    assert!(sub.is_active());
}

#[test]
fn debug_output_never_shows_message_bodies() {
    let message = ReceivedMessage {
        sequence: 7,
        body: b"attack at dawn".to_vec(),
    };
    let event = Event::Message {
        message: message.clone(),
    };
    for shown in [format!("{message:?}"), format!("{event:?}")] {
        assert!(!shown.contains("attack"), "{shown}");
        assert!(!shown.contains("97, 116"), "bytes leaked: {shown}");
        assert!(shown.contains("14 bytes redacted"), "{shown}");
    }
}
