//! Continuous batching: many requests share one engine's sequence slots.
//!
//! A [`Batcher`] owns an engine on a thread of its own. Requests wait in a FIFO queue until
//! a slot and their KV pages are free, then join the running batch: every step decodes one
//! token of each running sequence and, in the room left (the engine's
//! [`step_tokens`](Engine::step_tokens)), feeds the next piece of prompts still being read,
//! so a long prompt never stalls the others (chunked prefill). A sequence leaves at the
//! step after it finishes or its [`Stream`] is dropped, and its pages go back to the pool.
//!
//! Pages are reserved at admission for the whole request (prompt plus `max_tokens`, within
//! the context), so a running sequence never finds the pool empty and nothing is preempted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::engine::{
    Engine, FinishReason, GenerateParams, Generation, KvPool, MAX_TOP_LOGPROBS, SeqChunk, TokenLogprobs, TokensHash,
    check_request,
};
use crate::error::{Error, Result};

/// What a [`Stream`] delivers: tokens as they are chosen, then the outcome.
#[derive(Debug)]
pub enum Event {
    /// The next generated token (a final stop token included), with its log-probabilities
    /// when the request asked for them.
    Token(u32, Option<TokenLogprobs>),
    /// Generation ended; no event follows.
    Done(Generation),
    /// The request failed; no event follows.
    Failed(Error),
}

/// One request's events. Dropping it cancels the request: its sequence leaves the batch at
/// the next step.
#[derive(Debug)]
pub struct Stream {
    rx: mpsc::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Stream {
    /// Waits for the next event; `None` once the outcome was delivered.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event if one has come, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// What the scheduler is doing, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Sequences in the batch.
    pub active: usize,
    /// Requests queued for a slot or pages.
    pub waiting: usize,
    /// KV-cache pages in the pool.
    pub pages: usize,
    /// Pages no sequence holds.
    pub free_pages: usize,
    /// Forward passes run.
    pub steps: u64,
    /// The most sequences one step has held.
    pub largest_batch: usize,
    /// Requests whose stream was dropped before they ended.
    pub cancelled: u64,
    /// Requests finished (stopped, at their length, or at a full context).
    pub finished: u64,
}

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    /// Top log-probabilities asked for with each token.
    logprobs: Option<usize>,
    /// KV tokens reserved for it.
    reserve: usize,
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

struct State {
    waiting: VecDeque<Job>,
    /// Set when the batcher is dropped or its thread has ended.
    stopped: Option<String>,
    stats: BatchStats,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Schedules requests over one engine's batch (see the module docs).
pub struct Batcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    device: String,
    context_length: usize,
    max_batch: usize,
    vocab_size: usize,
    pool: KvPool,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("device", &self.device).field("stats", &self.stats()).finish()
    }
}

impl Batcher {
    /// Starts the scheduler's thread, which owns `engine` from now on. `vocab_size` bounds
    /// the token ids requests may hold.
    pub fn new(mut engine: Box<dyn Engine>, vocab_size: usize) -> Batcher {
        for seq in 0..engine.max_batch() {
            engine.release(seq);
        }
        let pool = engine.kv_pool();
        let stats = BatchStats { pages: pool.pages, free_pages: pool.free_pages, ..BatchStats::default() };
        let shared = Arc::new(Shared {
            state: Mutex::new(State { waiting: VecDeque::new(), stopped: None, stats }),
            wake: Condvar::new(),
        });
        let device = engine.device_name();
        let context_length = engine.context_length();
        let max_batch = engine.max_batch();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("engine".to_owned())
                .spawn(move || {
                    let _stop = StopOnExit(shared.clone());
                    Scheduler::new(engine, shared).run();
                })
                .expect("spawning the engine thread")
        };
        Batcher { shared, thread: Some(thread), device, context_length, max_batch, vocab_size, pool }
    }

    /// The engine's device.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// The most tokens one sequence holds.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Sequences decoded together.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The current figures.
    pub fn stats(&self) -> BatchStats {
        self.shared.lock().stats
    }

    /// Queues a request. Bad requests (empty prompt, no tokens asked for, a prompt that
    /// fills the context, a token outside the vocabulary, bad sampling) fail here and
    /// queue nothing.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams) -> Result<Stream> {
        self.submit_with_logprobs(prompt, params, None)
    }

    /// [`submit`](Self::submit), each token coming with its log-probability and those of
    /// the `logprobs` most likely tokens (at most [`MAX_TOP_LOGPROBS`]) when asked.
    pub fn submit_with_logprobs(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        logprobs: Option<usize>,
    ) -> Result<Stream> {
        if let Some(k) = logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidBatch(format!("{k} top logprobs asked; at most {MAX_TOP_LOGPROBS}")));
        }
        check_request(&prompt, &params, self.context_length)?;
        if let Some(&token) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfRange { token, vocab_size: self.vocab_size });
        }
        let reserve = (prompt.len() + params.max_tokens).min(self.context_length);
        if self.pool.pages_for(reserve) > self.pool.pages {
            return Err(Error::KvPoolTooSmall { needed: reserve, pool: self.pool.tokens() });
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job { prompt, params, logprobs, reserve, tx, cancel: cancel.clone(), submitted: Instant::now() };
        {
            let mut state = self.shared.lock();
            if let Some(why) = &state.stopped {
                return Err(Error::SchedulerStopped(why.clone()));
            }
            state.waiting.push_back(job);
            state.stats.waiting = state.waiting.len();
        }
        self.shared.wake.notify_one();
        Ok(Stream { rx, cancel })
    }

    /// Runs a request to its end, calling `on_token` with each token (and its
    /// log-probabilities when `logprobs` asks); returns `None` when `on_token` returned
    /// `false` (the request is then cancelled).
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        logprobs: Option<usize>,
        on_token: &mut dyn FnMut(u32, Option<TokenLogprobs>) -> bool,
    ) -> Result<Option<Generation>> {
        let stream = self.submit_with_logprobs(prompt, params, logprobs)?;
        loop {
            match stream.recv() {
                Some(Event::Token(t, lp)) => {
                    if !on_token(t, lp) {
                        return Ok(None);
                    }
                }
                Some(Event::Done(g)) => return Ok(Some(g)),
                Some(Event::Failed(e)) => return Err(e),
                None => return Err(Error::SchedulerStopped("the engine thread ended".to_owned())),
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().stopped = Some("the batcher was shut down".to_owned());
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks the batcher stopped and fails what waits when the engine thread ends, even by a
/// panic, so no caller waits forever.
struct StopOnExit(Arc<Shared>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        let why = state.stopped.get_or_insert_with(|| "the engine thread ended".to_owned()).clone();
        for job in state.waiting.drain(..) {
            let _ = job.tx.send(Event::Failed(Error::SchedulerStopped(why.clone())));
        }
        state.stats.waiting = 0;
    }
}

/// A request in the batch.
struct Running {
    job: Job,
    slot: usize,
    /// Prompt tokens fed so far.
    fed: usize,
    tokens: Vec<u32>,
    first_token: Option<Instant>,
}

/// The engine thread's state.
struct Scheduler {
    engine: Box<dyn Engine>,
    shared: Arc<Shared>,
    running: Vec<Running>,
    free_slots: Vec<usize>,
    reserved_pages: usize,
    pool: KvPool,
    /// Outcomes to send once the figures are published, so that a caller who has its
    /// outcome sees figures that count it.
    outbox: Vec<(mpsc::Sender<Event>, Event)>,
    finished: u64,
}

impl Scheduler {
    fn new(engine: Box<dyn Engine>, shared: Arc<Shared>) -> Scheduler {
        let pool = engine.kv_pool();
        let free_slots = (0..engine.max_batch()).rev().collect();
        Scheduler {
            engine,
            shared,
            running: Vec::new(),
            free_slots,
            reserved_pages: 0,
            pool,
            outbox: Vec::new(),
            finished: 0,
        }
    }

    fn run(mut self) {
        loop {
            if let Err(why) = self.admit() {
                for r in std::mem::take(&mut self.running) {
                    let _ = r.job.tx.send(Event::Failed(Error::SchedulerStopped(why.clone())));
                }
                return;
            }
            let cancelled = self.leave_cancelled();
            if self.running.is_empty() {
                self.publish(0, cancelled);
                continue;
            }
            let size = self.running.len();
            self.step();
            self.publish(size, cancelled);
        }
    }

    /// Waits for work, then moves queued requests into free slots while their pages fit,
    /// in order. Errs once the batcher is stopped.
    fn admit(&mut self) -> std::result::Result<(), String> {
        let mut state = self.shared.lock();
        while state.waiting.is_empty() && self.running.is_empty() && state.stopped.is_none() {
            state = self.shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &state.stopped {
            return Err(why.clone());
        }
        while let Some(job) = state.waiting.front() {
            if job.cancel.load(Ordering::Relaxed) {
                state.waiting.pop_front();
                state.stats.cancelled += 1;
                continue;
            }
            let pages = self.pool.pages_for(job.reserve);
            if self.free_slots.is_empty() || self.reserved_pages + pages > self.pool.pages {
                break;
            }
            let job = state.waiting.pop_front().expect("looked at the front");
            self.reserved_pages += pages;
            let slot = self.free_slots.pop().expect("checked non-empty");
            self.running.push(Running { job, slot, fed: 0, tokens: Vec::new(), first_token: None });
        }
        state.stats.waiting = state.waiting.len();
        Ok(())
    }

    fn leave(&mut self, index: usize) -> Running {
        let r = self.running.remove(index);
        self.engine.release(r.slot);
        self.free_slots.push(r.slot);
        self.reserved_pages -= self.pool.pages_for(r.job.reserve);
        r
    }

    /// Drops the sequences whose streams were dropped; returns how many.
    fn leave_cancelled(&mut self) -> u64 {
        let mut n = 0;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job.cancel.load(Ordering::Relaxed) {
                self.leave(i);
                n += 1;
            } else {
                i += 1;
            }
        }
        n
    }

    /// One forward pass over the batch: each decoding sequence's last token first, then
    /// prompt pieces in admission order in the room left.
    fn step(&mut self) {
        let budget = self.engine.step_tokens();
        let decoding = self.running.iter().filter(|r| !r.tokens.is_empty()).count();
        let mut room = budget.saturating_sub(decoding);
        // (index into running, tokens fed this step, whether it samples)
        let mut plan: Vec<(usize, usize, bool)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            if !r.tokens.is_empty() {
                plan.push((i, 1, true));
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            if r.tokens.is_empty() && room > 0 {
                let n = (r.job.prompt.len() - r.fed).min(room);
                room -= n;
                plan.push((i, n, r.fed + n == r.job.prompt.len()));
            }
        }
        let result = {
            let chunks: Vec<SeqChunk<'_>> = plan
                .iter()
                .map(|&(i, n, samples)| {
                    let r = &self.running[i];
                    let tokens = if r.tokens.is_empty() {
                        &r.job.prompt[r.fed..r.fed + n]
                    } else {
                        std::slice::from_ref(r.tokens.last().expect("decoding"))
                    };
                    let sample = samples.then_some((&r.job.params.sampling, r.tokens.len() as u32));
                    let logprobs = if samples { r.job.logprobs } else { None };
                    SeqChunk { seq: r.slot, tokens, sample, logprobs }
                })
                .collect();
            self.engine.forward_batch(&chunks)
        };
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                // The engine's state is unknown: every sequence in the step fails.
                let why = e.to_string();
                tracing::warn!(target: "compute::batch", error = %why, sequences = plan.len(), "a batched step failed");
                while !self.running.is_empty() {
                    let r = self.leave(0);
                    let e = Error::SchedulerStopped(format!("a batched step failed: {why}"));
                    self.outbox.push((r.job.tx, Event::Failed(e)));
                }
                return;
            }
        };
        let mut sampled = next.into_iter();
        let mut done = Vec::new();
        for &(i, n, samples) in &plan {
            let r = &mut self.running[i];
            if r.tokens.is_empty() {
                r.fed += n;
            }
            if !samples {
                continue;
            }
            let Some(next) = sampled.next() else { break };
            let token = next.token;
            r.first_token.get_or_insert_with(Instant::now);
            r.tokens.push(token);
            if r.job.tx.send(Event::Token(token, next.logprobs)).is_err() {
                r.job.cancel.store(true, Ordering::Relaxed);
                continue;
            }
            let finish = if r.job.params.stop_tokens.contains(&token) {
                Some(FinishReason::Stop)
            } else if r.tokens.len() >= r.job.params.max_tokens {
                Some(FinishReason::Length)
            } else if self.engine.seq_position(r.slot) >= self.engine.context_length() {
                Some(FinishReason::ContextFull)
            } else {
                None
            };
            if let Some(finish) = finish {
                done.push((i, finish));
            }
        }
        // Highest index first, so earlier indices stay valid.
        done.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, finish) in done {
            let r = self.leave(i);
            let first = r.first_token.unwrap_or_else(Instant::now);
            let generation = Generation {
                prompt_tokens: r.job.prompt.len(),
                tokens_hash: TokensHash::of(&r.tokens),
                tokens: r.tokens,
                finish,
                time_to_first_token: first.duration_since(r.job.submitted),
                decode_time: first.elapsed(),
            };
            self.outbox.push((r.job.tx, Event::Done(generation)));
            self.finished += 1;
        }
    }

    /// Updates the figures, then sends the outcomes of the step.
    fn publish(&mut self, batch: usize, cancelled: u64) {
        let pool = self.engine.kv_pool();
        {
            let mut state = self.shared.lock();
            let s = &mut state.stats;
            s.active = self.running.len();
            s.free_pages = pool.free_pages;
            s.cancelled += cancelled;
            s.finished = self.finished;
            if batch > 0 {
                s.steps += 1;
                s.largest_batch = s.largest_batch.max(batch);
            }
        }
        for (tx, event) in self.outbox.drain(..) {
            let _ = tx.send(event);
        }
    }
}
