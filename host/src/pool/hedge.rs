//! The hedge layer every family uses (tower's `hedge` is the model): run a call; if it has not
//! answered by the time `policy::recovery::hedge_after` gives, start a copy elsewhere and take
//! whichever answers first. What counts as a good answer, what happens to the other copy (run
//! out and booked, or dropped and so cancelled) and how each copy is booked stay with the
//! caller: a batch and a stream differ there, not in the race.

use std::future::Future;
use std::time::Duration;

/// Which copy answered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Primary,
    Backup,
}

/// How a hedged call went.
pub(crate) enum Raced<T, F> {
    /// Only the primary ran (it answered in time, hedging is off, or no copy could start).
    Alone { answer: T, call: F },
    /// Both ran: `first` answered first with `answer` (`answered` is that copy, spent or, for a
    /// stream, to read on); `other` is the copy still running.
    Both { first: Side, answer: T, answered: F, other: F },
}

/// Run `primary`; past `after` (none: never), ask `backup` for a copy (none: no replica free)
/// and race the two. Dropping the returned future drops both copies.
pub(crate) async fn race<T, F>(
    mut primary: F,
    after: Option<Duration>,
    backup: impl FnOnce() -> Option<F>,
) -> Raced<T, F>
where
    F: Future<Output = T> + Unpin,
{
    let alone = |answer, call| Raced::Alone { answer, call };
    let Some(after) = after else { return alone((&mut primary).await, primary) };
    tokio::select! {
        answer = &mut primary => return alone(answer, primary),
        () = tokio::time::sleep(after) => {}
    }
    let Some(mut copy) = backup() else { return alone((&mut primary).await, primary) };
    tokio::select! {
        answer = &mut primary => Raced::Both { first: Side::Primary, answer, answered: primary, other: copy },
        answer = &mut copy => Raced::Both { first: Side::Backup, answer, answered: copy, other: primary },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    type Call = Pin<Box<dyn Future<Output = &'static str> + Send>>;

    fn after(ms: u64, v: &'static str) -> Call {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_on_time_is_never_copied() {
        let mut asked = false;
        let r = race(after(10, "p"), Some(Duration::from_millis(50)), || {
            asked = true;
            Some(after(1, "b"))
        })
        .await;
        assert!(matches!(r, Raced::Alone { answer: "p", .. }));
        assert!(!asked, "no copy was asked for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_call_is_copied_and_the_faster_copy_answers() {
        match race(after(500, "p"), Some(Duration::from_millis(50)), || Some(after(10, "b"))).await {
            Raced::Both { first: Side::Backup, answer: "b", other, .. } => assert_eq!(other.await, "p"),
            _ => panic!("the copy answers first"),
        }
        match race(after(100, "p"), Some(Duration::from_millis(50)), || Some(after(200, "b"))).await {
            Raced::Both { first: Side::Primary, answer: "p", other, .. } => assert_eq!(other.await, "b"),
            _ => panic!("the primary answers first"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_copy_without_a_place_or_a_time() {
        let none = race(after(500, "p"), Some(Duration::from_millis(50)), || None).await;
        assert!(matches!(none, Raced::Alone { answer: "p", .. }));
        assert!(matches!(race(after(500, "p"), None, || Some(after(1, "b"))).await, Raced::Alone { answer: "p", .. }));
    }
}
