//! The wall-time limit: a thread that bumps the engine's epoch at the deadline (the store traps
//! with `Trap::Interrupt` at its next epoch check), and, for a job stuck where epochs are not
//! checked (a blocking host call), gives up on it after a grace period.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

use crate::spec::Error;

/// How long after the deadline a job that has not stopped is given up on.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

/// What to do with a job that did not stop within [`GRACE`] of its deadline; in the job process,
/// write its report and exit.
pub(crate) type OnHang = Box<dyn FnOnce() + Send>;

/// The running timer; [`Watchdog::finish`] (or dropping it) stops it.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the timer: `timeout` from now.
    pub(crate) fn start(
        engine: Engine,
        timeout: Duration,
        on_hang: Option<OnHang>,
    ) -> Result<Self, Error> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-job-watchdog".to_owned())
            .spawn(move || {
                if stopped.recv_timeout(timeout) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
                engine.increment_epoch();
                if let Some(on_hang) = on_hang
                    && stopped.recv_timeout(GRACE) == Err(RecvTimeoutError::Timeout)
                {
                    on_hang();
                }
            })
            .map_err(|e| Error::Setup(format!("cannot start the watchdog thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the timer, once the job has stopped. If the job was being given up on, this waits
    /// for that (which ends the process).
    pub(crate) fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread does not panic; if it did, there is nothing left to stop.
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
