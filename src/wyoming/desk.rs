//! An engine behind a counter: one thread owns the engine and does its clients' jobs
//! one at a time, in order; at most `queue` more wait. A new request that finds the
//! queue full is told at once (`Refused::Busy`) instead of waiting without bound — on
//! 2 cores a queue of Whisper passes is seconds of wait each — while the rest of a
//! request already under way (a text's next piece) waits its turn (`ask_next`).
//!
//! In `voxd run` with `[wyoming] serve_in_run`, the pipeline's own Whisper and Piper
//! stages are clients of the same desks (`blocking_ask`, from their threads): one
//! engine, one copy of its model, local turns and Wyoming's requests in one line.

use tokio::sync::{mpsc, oneshot};

type Job<E> = Box<dyn FnOnce(&mut E) + Send>;

/// What a streamed job may have made and its client not yet taken
/// (`blocking_ask_streamed`): then the engine waits for the client.
const HANDED_AT_MOST: usize = 4;

pub struct Desk<E> {
    name: &'static str,
    queue: usize,
    jobs: mpsc::Sender<Job<E>>,
}

/// Why a job was not done.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{name} is busy: {queue} requests already wait for it (`[wyoming] queue`); try again shortly")]
    Busy { name: &'static str, queue: usize },
    #[error("{0} failed inside its engine (a bug: see voxd's log); restart voxd")]
    Broken(&'static str),
}

impl Refused {
    /// The `error` event's code.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Busy { .. } => "busy",
            Refused::Broken(_) => "engine",
        }
    }
}

impl<E> Clone for Desk<E> {
    fn clone(&self) -> Desk<E> {
        Desk { name: self.name, queue: self.queue, jobs: self.jobs.clone() }
    }
}

impl<E: Send + 'static> Desk<E> {
    /// Starts the engine's thread (`voxd-wy-NAME`).
    pub fn open(name: &'static str, mut engine: E, queue: usize) -> std::io::Result<Desk<E>> {
        let (jobs, mut inbox) = mpsc::channel::<Job<E>>(queue);
        std::thread::Builder::new().name(format!("voxd-wy-{name}")).spawn(move || {
            let mut broken = false;
            while let Some(job) = inbox.blocking_recv() {
                // A panicking job would leave the engine in an unknown state: it is
                // logged, and every later job refused (its reply dropped), rather
                // than each client's connection dying without a word.
                if broken {
                    continue;
                }
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut engine))).is_err() {
                    tracing::error!("wyoming: the {name} engine panicked; its requests are refused from now on");
                    broken = true;
                }
            }
        })?;
        Ok(Desk { name, queue, jobs })
    }

    /// Does `job` on the engine when its turn comes; `Busy` at once when `queue` jobs
    /// already wait.
    pub async fn ask<R: Send + 'static>(&self, job: impl FnOnce(&mut E) -> R + Send + 'static) -> Result<R, Refused> {
        let (job, answer) = self.wrap(job);
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Busy { name: self.name, queue: self.queue },
            mpsc::error::TrySendError::Closed(_) => Refused::Broken(self.name),
        })?;
        answer.await.map_err(|_| Refused::Broken(self.name))
    }

    /// Does `job` when its turn comes, waiting for a place in the queue: for the rest
    /// of a request already accepted.
    pub async fn ask_next<R: Send + 'static>(&self, job: impl FnOnce(&mut E) -> R + Send + 'static) -> Result<R, Refused> {
        let (job, answer) = self.wrap(job);
        self.jobs.send(job).await.map_err(|_| Refused::Broken(self.name))?;
        answer.await.map_err(|_| Refused::Broken(self.name))
    }

    /// `ask_next` from a thread outside the async runtime (a pipeline stage's): waits
    /// for a place in the queue, then for the job to be done. A stage is never told
    /// "busy", so the desk refuses it only once its engine has panicked: then this
    /// panics too, as the stage would with an engine of its own — the run ends with
    /// the stage named and systemd restarts voxd, rather than every later turn
    /// getting an apology.
    pub fn blocking_ask<R: Send + 'static>(&self, job: impl FnOnce(&mut E) -> R + Send + 'static) -> R {
        self.blocking_ask_streamed(|engine, _: &mut dyn FnMut(())| job(engine), &mut |()| {})
    }

    /// `blocking_ask` for a job that hands things over while it runs (a voice's
    /// slices): each reaches `each` on this thread as soon as it is made, a few at
    /// most waiting between the two threads.
    pub fn blocking_ask_streamed<T: Send + 'static, R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut E, &mut dyn FnMut(T)) -> R + Send + 'static,
        each: &mut dyn FnMut(T),
    ) -> R {
        let (hand_over, handed) = std::sync::mpsc::sync_channel::<T>(HANDED_AT_MOST);
        let (job, answer) = self.wrap(move |engine| job(engine, &mut |t| {
            let _ = hand_over.send(t);
        }));
        let mut done = None;
        if self.jobs.blocking_send(job).is_ok() {
            // Ends when the job is over and `hand_over` gone with it (or with a job
            // the desk dropped undone).
            handed.iter().for_each(each);
            done = answer.blocking_recv().ok();
        }
        done.unwrap_or_else(|| panic!("{}", Refused::Broken(self.name)))
    }

    fn wrap<R: Send + 'static>(&self, job: impl FnOnce(&mut E) -> R + Send + 'static) -> (Job<E>, oneshot::Receiver<R>) {
        let (reply, answer) = oneshot::channel();
        (Box::new(move |engine| { let _ = reply.send(job(engine)); }), answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn new_requests_beyond_the_queue_are_refused_at_once_the_rest_of_one_waits() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let desk = Arc::new(Desk::open("test", Vec::new(), 1).unwrap());
            let (hold, held) = std::sync::mpsc::channel::<()>();
            let (started, has_started) = oneshot::channel::<()>();
            // The first job holds the engine until told; the second waits in the
            // queue; a third new request is refused, a continuation waits.
            let d = desk.clone();
            let first = tokio::spawn(async move {
                d.ask(move |log: &mut Vec<u32>| {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                    log.push(1);
                })
                .await
            });
            has_started.await.unwrap();
            let d = desk.clone();
            let second = tokio::spawn(async move { d.ask(|log: &mut Vec<u32>| log.push(2)).await });
            tokio::task::yield_now().await;
            let third = desk.ask(|log: &mut Vec<u32>| log.push(3)).await;
            assert_eq!(third.unwrap_err().to_string(), "test is busy: 1 requests already wait for it (`[wyoming] queue`); try again shortly");
            let d = desk.clone();
            let next = tokio::spawn(async move { d.ask_next(|log: &mut Vec<u32>| log.push(4)).await });
            hold.send(()).unwrap();
            first.await.unwrap().unwrap();
            second.await.unwrap().unwrap();
            next.await.unwrap().unwrap();
            assert_eq!(desk.ask(|log: &mut Vec<u32>| log.clone()).await.unwrap(), vec![1, 2, 4]);
        });
    }

    #[test]
    fn a_stage_thread_is_served_in_line_with_the_async_clients() {
        let desk = Desk::open("test", Vec::new(), 2).unwrap();
        let stage = desk.clone();
        let pushed = std::thread::spawn(move || (1..=3).map(|n| stage.blocking_ask(move |log: &mut Vec<u32>| { log.push(n); log.len() })).collect::<Vec<_>>());
        assert_eq!(pushed.join().unwrap(), vec![1, 2, 3]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(desk.ask(|log: &mut Vec<u32>| log.clone())).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "asr failed inside its engine")]
    fn a_shared_engine_that_broke_ends_the_stage_as_its_own_would() {
        let desk = Desk::open("asr", 0u32, 2).unwrap();
        desk.blocking_ask(|_: &mut u32| -> u32 { panic!("the engine broke") });
    }

    #[test]
    fn a_job_that_panics_is_answered_and_the_desk_refuses_from_then_on() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let desk = Desk::open("test", 0u32, 2).unwrap();
            let broken = desk.ask(|_: &mut u32| -> u32 { panic!("the engine broke") }).await;
            assert!(matches!(broken, Err(Refused::Broken("test"))), "{broken:?}");
            assert!(matches!(desk.ask(|n: &mut u32| *n).await, Err(Refused::Broken("test"))));
        });
    }
}
