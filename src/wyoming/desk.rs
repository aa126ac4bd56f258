//! An engine behind a counter: one thread owns the engine and does its clients' jobs
//! one at a time, in order; at most `queue` more wait. A client that finds the queue
//! full is told at once (`Busy`) instead of waiting without bound — on 2 cores a
//! queue of Whisper passes is seconds of wait each.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use tokio::sync::oneshot;

type Job<E> = Box<dyn FnOnce(&mut E) + Send>;

pub struct Desk<E> {
    name: &'static str,
    queue: usize,
    jobs: SyncSender<Job<E>>,
}

/// The desk's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("{name} is busy: {queue} requests already wait for it (`[wyoming] queue`); try again shortly")]
pub struct Busy {
    pub name: &'static str,
    pub queue: usize,
}

impl<E: Send + 'static> Desk<E> {
    /// Starts the engine's thread (`voxd-wy-NAME`).
    pub fn open(name: &'static str, mut engine: E, queue: usize) -> std::io::Result<Desk<E>> {
        let (jobs, inbox) = sync_channel::<Job<E>>(queue);
        std::thread::Builder::new().name(format!("voxd-wy-{name}")).spawn(move || {
            for job in inbox {
                job(&mut engine);
            }
        })?;
        Ok(Desk { name, queue, jobs })
    }

    /// Does `job` on the engine when its turn comes; `Busy` when `queue` jobs
    /// already wait.
    pub async fn ask<R: Send + 'static>(&self, job: impl FnOnce(&mut E) -> R + Send + 'static) -> Result<R, Busy> {
        let (reply, answer) = oneshot::channel();
        let job: Job<E> = Box::new(move |engine| {
            let _ = reply.send(job(engine));
        });
        let busy = Busy { name: self.name, queue: self.queue };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(busy),
            Err(TrySendError::Disconnected(_)) => panic!("the {} desk's thread ended (a job panicked)", self.name),
        }
        Ok(answer.await.unwrap_or_else(|_| panic!("the {} desk's thread ended (a job panicked)", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_beyond_the_queue_are_refused_at_once_and_the_rest_done_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let desk = std::sync::Arc::new(Desk::open("test", Vec::new(), 1).unwrap());
            let (hold, held) = std::sync::mpsc::channel::<()>();
            // The first job blocks the engine; the second waits in the queue; the third is refused.
            let d = desk.clone();
            let first = tokio::spawn(async move {
                d.ask(move |log: &mut Vec<u32>| {
                    held.recv().unwrap();
                    log.push(1);
                })
                .await
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let d = desk.clone();
            let second = tokio::spawn(async move { d.ask(|log: &mut Vec<u32>| log.push(2)).await });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let third = desk.ask(|log: &mut Vec<u32>| log.push(3)).await;
            assert_eq!(third.unwrap_err().to_string(), "test is busy: 1 requests already wait for it (`[wyoming] queue`); try again shortly");
            hold.send(()).unwrap();
            first.await.unwrap().unwrap();
            second.await.unwrap().unwrap();
            assert_eq!(desk.ask(|log: &mut Vec<u32>| log.clone()).await.unwrap(), vec![1, 2]);
        });
    }
}
