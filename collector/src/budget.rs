//! The memory budget: bytes of accepted spans not yet committed to the lake.
//!
//! An export reserves its size before it enters the WAL; the reservation travels with the
//! WAL segment and is released only when the segment has been committed to every tier. When
//! the budget is spent the receivers answer with the retryable overload status, so a slow
//! disk or a stalled lake shows up as backpressure rather than as growth.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A shared byte budget.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes held against a [`MemoryBudget`]; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Inner>,
    bytes: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// Reserves `bytes`, or `None` when that would exceed the limit. A request larger than
    /// the whole budget is admitted when nothing else is held, so that it can make progress.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut used = self.inner.used.load(Ordering::Relaxed);
        loop {
            let fits = used + bytes <= self.inner.limit || used == 0;
            if !fits {
                return None;
            }
            match self.inner.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.inner.clone(),
                        bytes,
                    })
                }
                Err(actual) => used = actual,
            }
        }
    }

    /// Reserves `bytes` even past the limit: for what is already on disk at recovery.
    pub fn force_reserve(&self, bytes: usize) -> Reservation {
        self.inner.used.fetch_add(bytes, Ordering::AcqRel);
        Reservation {
            budget: self.inner.clone(),
            bytes,
        }
    }

    /// Whether the budget is spent.
    pub fn is_full(&self) -> bool {
        self.used() >= self.inner.limit
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }
}

impl Reservation {
    /// The bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(50).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert!(budget.is_full());
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_oversized_request_is_admitted_only_alone() {
        let budget = MemoryBudget::new(10);
        let big = budget.try_reserve(50).unwrap();
        assert!(budget.try_reserve(1).is_none());
        drop(big);
        let small = budget.try_reserve(1).unwrap();
        assert!(budget.try_reserve(50).is_none());
        drop(small);
    }
}
