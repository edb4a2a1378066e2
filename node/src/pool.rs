//! Several models on one node: each is loaded on its first request and evicted, least
//! recently used first, when loading another would pass the memory budget, so an idle
//! niche model costs nothing but its advert.
//!
//! A model's cost is estimated as its file's bytes (the weights the engine holds, on the
//! device or in RAM) plus its KV cache. A model serving a request is never evicted; when
//! every other model is busy the budget is exceeded rather than a request refused, and the
//! node says so in its log.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use attrinet_compute::{Backend, BatchOptions, Model};
use attrinet_p2p::{GenerateError, Generated, Generator, Prompt, Sampling};

use crate::engine::{EngineGenerator, prompt_tokens};
use crate::metrics::Metrics;

struct Entry {
    model: Arc<Model>,
    batch: BatchOptions,
    /// Estimated memory while loaded.
    bytes: u64,
    engine: Mutex<Option<Arc<EngineGenerator>>>,
    /// The pool's clock at the last use.
    last_used: AtomicU64,
    /// What the last load took, ms (advertised while unloaded).
    cold_start_ms: AtomicU32,
}

/// The node's models and the engines of those loaded.
pub struct ModelPool {
    backend: Backend,
    /// Bytes the loaded models may take together; `None`: no limit.
    budget: Option<u64>,
    entries: Vec<Entry>,
    clock: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ModelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPool").field("models", &self.entries.len()).field("budget", &self.budget).finish()
    }
}

impl ModelPool {
    /// A pool of `models`, each to run on `backend` with its batch options, within
    /// `budget` bytes. Nothing is loaded yet.
    pub fn new(
        models: Vec<(Arc<Model>, BatchOptions)>,
        backend: Backend,
        budget: Option<u64>,
        metrics: Arc<Metrics>,
    ) -> Arc<ModelPool> {
        let entries = models
            .into_iter()
            .map(|(model, batch)| {
                let kv = batch.kv_tokens.unwrap_or(0) as u64 * model.config().kv_bytes_per_token() as u64;
                Entry {
                    bytes: model.file_len().saturating_add(kv),
                    model,
                    batch,
                    engine: Mutex::new(None),
                    last_used: AtomicU64::new(0),
                    cold_start_ms: AtomicU32::new(0),
                }
            })
            .collect();
        Arc::new(ModelPool { backend, budget, entries, clock: AtomicU64::new(0), metrics })
    }

    /// The generator of model `index`, for an offer.
    pub fn generator(self: &Arc<Self>, index: usize) -> PooledGenerator {
        PooledGenerator { pool: self.clone(), index }
    }

    /// The models, in order.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.entries.iter().map(|e| e.model.as_ref())
    }

    /// Whether model `index` is loaded.
    pub fn is_loaded(&self, index: usize) -> bool {
        // Never waits: a model being loaded (its lock held) is not loaded yet.
        matches!(self.entries[index].engine.try_lock(), Ok(slot) if slot.is_some())
    }

    /// Estimated bytes model `index` takes while loaded.
    pub fn model_bytes(&self, index: usize) -> u64 {
        self.entries[index].bytes
    }

    /// Estimated bytes the loaded models take.
    pub fn loaded_bytes(&self) -> u64 {
        (0..self.entries.len()).filter(|&i| self.is_loaded(i)).map(|i| self.entries[i].bytes).sum()
    }

    /// Model `index`'s engine, loading it (and evicting others) if it is not loaded.
    pub fn engine(&self, index: usize) -> Result<Arc<EngineGenerator>, attrinet_compute::Error> {
        let entry = &self.entries[index];
        entry.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Held while loading: other requests for this model wait for the same load.
        let mut slot = entry.engine.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = slot.as_ref() {
            return Ok(engine.clone());
        }
        self.make_room(index);
        let start = Instant::now();
        let engine = Arc::new(EngineGenerator::open(entry.model.clone(), self.backend, entry.batch)?);
        let ms = u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX).max(1);
        entry.cold_start_ms.store(ms, Ordering::Relaxed);
        self.metrics.model_loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "serve", model = entry.model.name().unwrap_or("model"), ms, "model loaded");
        *slot = Some(engine.clone());
        Ok(engine)
    }

    /// Evicts idle models, least recently used first, until model `index` fits the budget.
    fn make_room(&self, index: usize) {
        let Some(budget) = self.budget else { return };
        let need = self.entries[index].bytes;
        let mut order: Vec<usize> = (0..self.entries.len()).filter(|&i| i != index).collect();
        order.sort_by_key(|&i| self.entries[i].last_used.load(Ordering::Relaxed));
        let mut loaded: u64 = order.iter().filter(|&&i| self.is_loaded_now(i)).map(|&i| self.entries[i].bytes).sum();
        for i in order {
            if loaded.saturating_add(need) <= budget {
                return;
            }
            let entry = &self.entries[i];
            // A model being loaded holds its lock: not evictable now.
            let Ok(mut slot) = entry.engine.try_lock() else { continue };
            // Each request holds a clone while it runs: one reference means idle.
            if slot.as_ref().is_some_and(|e| Arc::strong_count(e) == 1) {
                *slot = None;
                loaded = loaded.saturating_sub(entry.bytes);
                self.metrics.model_evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "serve", model = entry.model.name().unwrap_or("model"), "model evicted");
            }
        }
        if loaded.saturating_add(need) > budget {
            tracing::warn!(
                target: "serve",
                loaded_mib = loaded >> 20,
                need_mib = need >> 20,
                budget_mib = budget >> 20,
                "the other models are busy: loading past the memory budget"
            );
        }
    }

    fn is_loaded_now(&self, i: usize) -> bool {
        match self.entries[i].engine.try_lock() {
            Ok(slot) => slot.is_some(),
            // Being loaded: count it, it will be.
            Err(_) => true,
        }
    }
}

/// One model of a [`ModelPool`] as the network's [`Generator`].
#[derive(Debug)]
pub struct PooledGenerator {
    pool: Arc<ModelPool>,
    index: usize,
}

impl Generator for PooledGenerator {
    fn count_tokens(&self, prompt: &Prompt) -> Result<u32, GenerateError> {
        Ok(prompt_tokens(&self.pool.entries[self.index].model, prompt)?.len() as u32)
    }

    fn generate(
        &self,
        prompt: &Prompt,
        max_tokens: u32,
        sampling: &Sampling,
        on_token: &mut dyn FnMut(Generated) -> bool,
    ) -> Result<(), GenerateError> {
        let engine = self.pool.engine(self.index).map_err(|e| GenerateError::Engine(Box::new(e)))?;
        engine.generate(prompt, max_tokens, sampling, on_token)
    }

    fn cold_start_ms(&self) -> u32 {
        if self.pool.is_loaded(self.index) {
            0
        } else {
            self.pool.entries[self.index].cold_start_ms.load(Ordering::Relaxed).max(1)
        }
    }
}
