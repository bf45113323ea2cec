//! The batch kernels: rolling statistics of `N` signals that share their timestamps, one row of
//! `N` values per sample, with the arithmetic of [`RollingWindow`](super::RollingWindow).
//!
//! The rows are cut into blocks (see [`BLOCK_ROWS`] for their size). A block starts from sums
//! computed exactly (two passes) over the window ending at its first row, found by binary search,
//! and moves on row by row: the new row's values are added and the rows that left are
//! subtracted (when one row leaves as one arrives, the steady state, with one update of each
//! sum: `S1 += (x − K) − (y − K)`). As in the streaming window, the sums are recomputed from the rows
//! around the current mean once for every `len` evictions, and around the exact mean when the
//! rows that left carried more than half of `S2` of a signal or a signal's mean wandered more
//! than four standard deviations (and more than rounding) from its centre — for all `N` signals
//! at once, in `N`-wide loops the compiler vectorises. Since nothing crosses a block boundary,
//! the blocks can be computed one after another or by several threads, which take them from a
//! shared queue (a thread slowed by other work takes fewer), with results identical to the bit.
//!
//! The rows are checked (timestamps in order, values finite) a few rows ahead of the one being
//! computed, so that the check's loads also bring the rows from memory early; when a check fails,
//! the whole input is validated to name the first problem, as
//! [`rolling_rows`](super::rolling_rows) does.

// The loops over the `N` signals index several arrays in step, which is what lets the compiler
// vectorise them.
#![allow(clippy::needless_range_loop)]

use super::{ColumnError, DriftRisk, DriftThresholds, OFF_CENTRE_FLOOR, RollingRows, WindowSpan};
use std::ops::Range;
use std::sync::Mutex;

/// The fewest rows per block of the batch kernels. Every block starts from sums computed exactly
/// over the window ending at its first row, so the results do not depend on how many threads
/// computed them. A block holds at least four windows' worth of rows (the most found at eight
/// points of the series), so starting it costs at most half a pass per row, and at least this
/// many; the size depends on the timestamps and the span only.
pub const BLOCK_ROWS: usize = 1 << 13;

/// The rows per block for `ts` and a window of `span_ms` (see [`BLOCK_ROWS`]).
fn block_rows(ts: &[i64], span_ms: i64) -> usize {
    let len = ts.len();
    let widest = (1..=8)
        .map(|k| {
            let i = (k * len / 8).saturating_sub(1);
            let cutoff = ts.get(i).map_or(i64::MIN, |t| t.saturating_sub(span_ms));
            i + 1
                - ts[..i.min(len)]
                    .partition_point(|&t| t <= cutoff)
                    .min(i + 1)
        })
        .max()
        .unwrap_or(0);
    widest
        .saturating_mul(4)
        .max(BLOCK_ROWS)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
}

// The window ending at the current row: first row inside, centres and shifted sums per signal,
// the squared rounding floor of each centre (see `OFF_CENTRE_FLOOR`), evictions since the sums
// were last recomputed.
#[derive(Debug, Clone, Copy)]
struct Sums<const N: usize> {
    lo: usize,
    k: [f64; N],
    s1: [f64; N],
    s2: [f64; N],
    floor2: [f64; N],
    evicted: usize,
}

impl<const N: usize> Sums<N> {
    // The sums of `rows[lo..=i]` around their exact mean: the mean, then the shifted sums.
    fn exact(rows: &[[f64; N]], lo: usize, i: usize) -> Self {
        let inside = &rows[lo..=i];
        let mut sum = [0.0; N];
        for r in inside {
            for j in 0..N {
                sum[j] += r[j];
            }
        }
        let n = inside.len() as f64;
        let k = sum.map(|s| s / n);
        Self::around(rows, lo, i, k)
    }

    // The sums of `rows[lo..=i]` around the centres `k` (one pass).
    fn around(rows: &[[f64; N]], lo: usize, i: usize, k: [f64; N]) -> Self {
        let (mut s1, mut s2) = ([0.0; N], [0.0; N]);
        for r in &rows[lo..=i] {
            for j in 0..N {
                let d = r[j] - k[j];
                s1[j] += d;
                s2[j] += d * d;
            }
        }
        Self {
            lo,
            k,
            s1,
            s2,
            floor2: floor2(&k),
            evicted: 0,
        }
    }

    // The window of the single row `i`.
    fn single(x: &[f64; N], i: usize) -> Self {
        Self {
            lo: i,
            k: *x,
            s1: [0.0; N],
            s2: [0.0; N],
            floor2: floor2(x),
            evicted: 0,
        }
    }

    fn mean(&self, n: usize) -> [f64; N] {
        let n = n as f64;
        std::array::from_fn(|j| self.k[j] + self.s1[j] / n)
    }

    fn stdev(&self, n: usize) -> [f64; N] {
        if n < 2 {
            return [0.0; N];
        }
        let (nf, n1) = (n as f64, (n - 1) as f64);
        std::array::from_fn(|j| ((self.s2[j] - self.s1[j] * self.s1[j] / nf).max(0.0) / n1).sqrt())
    }

    // Whether the window must be recomputed, with the rounding floor of the centres.
    #[cold]
    fn beyond_floor(&self, c: f64, n2: f64, e2: &[f64; N]) -> bool {
        (0..N).any(|j| {
            let q = self.s1[j] * self.s1[j];
            (q > c * self.s2[j] && q > n2 * self.floor2[j]) || e2[j] > self.s2[j]
        })
    }

    // Moves the window to end at row `i`: adds it, evicts the rows at or before `cutoff`, and
    // recomputes the sums when the rules of the module say so.
    #[inline(always)]
    fn step(&mut self, ts: &[i64], rows: &[[f64; N]], i: usize, cutoff: i64) {
        let x = &rows[i];
        let mut lo = self.lo;
        let mut e2 = [0.0; N];
        if lo < i && ts[lo] <= cutoff && !(lo + 1 < i && ts[lo + 1] <= cutoff) {
            // One row leaves as one arrives (the steady state): one update of each sum.
            let y = &rows[lo];
            for j in 0..N {
                let d = x[j] - self.k[j];
                let e = y[j] - self.k[j];
                e2[j] = e * e;
                self.s1[j] += d - e;
                self.s2[j] += d * d - e2[j];
            }
            lo += 1;
        } else {
            for j in 0..N {
                let d = x[j] - self.k[j];
                self.s1[j] += d;
                self.s2[j] += d * d;
            }
            while lo < i && ts[lo] <= cutoff {
                let y = &rows[lo];
                for j in 0..N {
                    let e = y[j] - self.k[j];
                    let ee = e * e;
                    self.s1[j] -= e;
                    self.s2[j] -= ee;
                    e2[j] += ee;
                }
                lo += 1;
            }
        }
        self.evicted += lo - self.lo;
        self.lo = lo;
        if lo == i {
            // Only the new row is inside: start again from it.
            *self = Self::single(x, i);
            return;
        }
        // Recompute when the rows that left carried more than half of S2 (what is left is less
        // than what left) or the mean is off the centre (the rounding floor is looked at only
        // then, to keep the common path short).
        let n = as_f64(i + 1 - lo);
        let c = 16.0 / 17.0 * n;
        let mut maybe = false;
        for j in 0..N {
            maybe |= (self.s1[j] * self.s1[j] > c * self.s2[j]) | (e2[j] > self.s2[j]);
        }
        let cancelled_or_off = maybe && self.beyond_floor(c, n * n, &e2);
        if cancelled_or_off {
            *self = Self::exact(rows, lo, i);
        } else if self.evicted > (i + 1 - lo).max(64) {
            let k = self.mean(i + 1 - lo);
            *self = Self::around(rows, lo, i, k);
        }
    }
}

// `(OFF_CENTRE_FLOOR·k)²` of each centre.
fn floor2<const N: usize>(k: &[f64; N]) -> [f64; N] {
    k.map(|k| (OFF_CENTRE_FLOOR * k) * (OFF_CENTRE_FLOOR * k))
}

// What a kernel does with the window ending at each row.
trait Sink<const N: usize> {
    // `at`: the row's position in its block; `n`: rows in its window.
    fn row(&mut self, at: usize, n: usize, w: &Sums<N>);
}

// Rows are checked (order and finiteness) this far ahead of the row being computed: the loads of
// the check start bringing the rows from memory while the window arithmetic of earlier rows
// runs, and feed nothing the arithmetic waits for.
const AHEAD: usize = 32;

// Whether `ts[a..b]` continues `ts[..a]` in order and `rows[a..b]` are finite.
fn checked<const N: usize>(ts: &[i64], rows: &[[f64; N]], a: usize, b: usize) -> bool {
    let mut sorted = true;
    for w in ts[a.saturating_sub(1)..b].windows(2) {
        sorted &= w[0] <= w[1];
    }
    let mut acc = 0.0;
    for r in &rows[a..b] {
        finite_into(&mut acc, r);
    }
    sorted & (acc == 0.0)
}

// `x·0` is ±0 for a finite `x` and NaN otherwise, so `acc` stays 0 exactly while every value
// added is finite. The row is summed as a tree first, so that one register carries the check.
#[inline(always)]
fn finite_into<const N: usize>(acc: &mut f64, r: &[f64; N]) {
    let mut v = r.map(|x| x * 0.0);
    let mut w = N;
    while w > 1 {
        let h = w / 2;
        for j in 0..h {
            v[j] += v[j + w - h];
        }
        w -= h;
    }
    if N > 0 {
        *acc += v[0];
    }
}

// Runs the rows of `range` through the window, calling the sink for each, and returns the sums
// of the last window (`None` for an empty range) and whether every row of the range was in
// order and finite — when not, the results are meaningless and the caller names the problem.
// `range` starts a block (or the series). Never panics on unsorted or non-finite input.
fn run<const N: usize, S: Sink<N>>(
    ts: &[i64],
    rows: &[[f64; N]],
    span_ms: i64,
    range: Range<usize>,
    sink: &mut S,
) -> (Option<Sums<N>>, bool) {
    let (start, end) = (range.start, range.end);
    if start >= end {
        return (None, true);
    }
    let mut ok = checked(ts, rows, start, (start + AHEAD).min(end));
    let cutoff = ts[start].saturating_sub(span_ms);
    let lo = ts[..start].partition_point(|&t| t <= cutoff).min(start);
    let mut w = Sums::exact(rows, lo, start);
    sink.row(0, start + 1 - lo, &w);
    let mut finite = 0.0;
    for i in start + 1..end {
        // Row `i + AHEAD − 1` is checked now (the first `AHEAD` were checked above).
        let a = i + AHEAD - 1;
        if a < end {
            ok &= ts[a - 1] <= ts[a];
            finite_into(&mut finite, &rows[a]);
        }
        w.step(ts, rows, i, ts[i].saturating_sub(span_ms));
        sink.row(i - start, i + 1 - w.lo, &w);
    }
    (Some(w), ok & (finite == 0.0))
}

/// The same checks as the kernels make row by row, naming the first problem.
fn validate<const N: usize>(ts: &[i64], rows: &[[f64; N]]) -> Result<(), ColumnError> {
    if ts.len() != rows.len() {
        return Err(ColumnError::Length {
            ts: ts.len(),
            values: rows.len(),
        });
    }
    if let Some(i) = ts.windows(2).position(|w| w[1] < w[0]) {
        return Err(ColumnError::Unsorted(i + 1));
    }
    if let Some(i) = rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
        return Err(ColumnError::NonFinite(i));
    }
    Ok(())
}

// The blocks of a series of `len` rows.
fn blocks(len: usize, block: usize) -> Vec<Range<usize>> {
    let block = block.max(1);
    (0..len.div_ceil(block))
        .map(|b| b * block..((b + 1).saturating_mul(block)).min(len))
        .collect()
}

// Runs every block with its own sink on up to `threads` threads (this one and scoped ones),
// which take the next block from a shared queue as they finish one, so a thread slowed by other
// work takes fewer; returns the sinks with the last sums and check of each block, in order.
fn run_blocks<const N: usize, S: Sink<N> + Send>(
    ts: &[i64],
    rows: &[[f64; N]],
    span_ms: i64,
    work: Vec<(Range<usize>, S)>,
    threads: usize,
) -> Vec<(S, Option<Sums<N>>, bool)> {
    let threads = threads.clamp(1, work.len().max(1));
    let queue = Mutex::new(work.into_iter().enumerate());
    let worker = || {
        let mut done = Vec::new();
        loop {
            // A worker that panicked leaves the queue as it was; the panic is raised below.
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((at, (range, mut sink))) = next else {
                return done;
            };
            let (w, ok) = run(ts, rows, span_ms, range, &mut sink);
            done.push((at, sink, w, ok));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mut done = worker();
        for h in handles {
            match h.join() {
                Ok(d) => done.extend(d),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_unstable_by_key(|d| d.0);
    done.into_iter().map(|(_, s, w, ok)| (s, w, ok)).collect()
}

/// The number of threads the kernels use when asked for 0: the available parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// Sets `v` to `len` elements without writing those it keeps (a fresh allocation comes zeroed
// from the allocator, so the kernel's writes are the first touch of its pages).
fn fit<T: Clone>(v: &mut Vec<T>, len: usize, zero: T) {
    if v.capacity() < len {
        *v = vec![zero; len];
    } else {
        v.truncate(len);
        v.resize(len, zero);
    }
}

// Writes the mean and sample stdev of each row's window, with a table of `1/n` so that no
// division is left in the loop.
struct StatsSink<'a, const N: usize> {
    n: &'a mut [u32],
    mean: &'a mut [[f64; N]],
    stdev: &'a mut [[f64; N]],
    inv: Vec<f64>,
}

impl<const N: usize> Sink<N> for StatsSink<'_, N> {
    #[inline(always)]
    fn row(&mut self, at: usize, n: usize, w: &Sums<N>) {
        if n >= self.inv.len() {
            grow_inverses(&mut self.inv, n);
        }
        // inv[0] = 0 gives σ = 0 for a single sample.
        let (inv_n, inv_n1) = (self.inv[n], self.inv[n - 1]);
        let mut mean = [0.0; N];
        let mut sd = [0.0; N];
        for j in 0..N {
            mean[j] = w.k[j] + w.s1[j] * inv_n;
            let var = (w.s2[j] - w.s1[j] * w.s1[j] * inv_n) * inv_n1;
            sd[j] = if var > 0.0 { var } else { 0.0 }.sqrt();
        }
        self.n[at] = u32::try_from(n).unwrap_or(u32::MAX);
        self.mean[at] = mean;
        self.stdev[at] = sd;
    }
}

// Extends the table of `1/i` (with `1/0` taken as 0) to cover `n`.
#[cold]
fn grow_inverses(inv: &mut Vec<f64>, n: usize) {
    if inv.is_empty() {
        inv.push(0.0);
    }
    let want = (n + 1).max(2 * inv.len());
    while inv.len() < want {
        inv.push(1.0 / inv.len() as f64);
    }
}

/// [`rolling_rows_into`](super::rolling_rows_into) on `threads` threads (0: one per available
/// core): the threads take the blocks (see [`BLOCK_ROWS`]) one at a time from a shared queue,
/// each writing its blocks' part of the output. The results are identical to the bit whatever
/// the number of threads. On error `out` is left empty.
pub fn rolling_rows_par_into<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
    out: &mut RollingRows<N>,
    threads: usize,
) -> Result<(), ColumnError> {
    let block = block_rows(ts, span.as_millis());
    rows_with_blocks(ts, rows, span, out, threads, block)
}

pub(super) fn rows_with_blocks<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
    out: &mut RollingRows<N>,
    threads: usize,
    block: usize,
) -> Result<(), ColumnError> {
    if ts.len() != rows.len() {
        return Err(ColumnError::Length {
            ts: ts.len(),
            values: rows.len(),
        });
    }
    let len = ts.len();
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    fit(&mut out.n, len, 0);
    fit(&mut out.mean, len, [0.0; N]);
    fit(&mut out.stdev, len, [0.0; N]);
    let mut work = Vec::new();
    let (mut n, mut mean, mut stdev) = (
        out.n.as_mut_slice(),
        out.mean.as_mut_slice(),
        out.stdev.as_mut_slice(),
    );
    for range in blocks(len, block) {
        let k = range.len();
        let (a, rest_n) = n.split_at_mut(k);
        let (b, rest_mean) = mean.split_at_mut(k);
        let (c, rest_stdev) = stdev.split_at_mut(k);
        (n, mean, stdev) = (rest_n, rest_mean, rest_stdev);
        let sink = StatsSink {
            n: a,
            mean: b,
            stdev: c,
            inv: Vec::new(),
        };
        work.push((range, sink));
    }
    let done = run_blocks(ts, rows, span.as_millis(), work, threads);
    if done.iter().all(|d| d.2) {
        return Ok(());
    }
    out.n.clear();
    out.mean.clear();
    out.stdev.clear();
    validate(ts, rows)?;
    debug_assert!(false, "a row failed a check that validate passed");
    Ok(())
}

/// What [`rolling_risk`] returns: for each of `N` signals, the drift risk of the window ending at
/// every sample, counted, and the statistics of the last window.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingRisk<const N: usize> {
    /// Per signal, how many samples' windows had each risk, indexed by `DriftRisk as usize`
    /// (insufficient data, low, medium, high).
    pub counts: [[u64; 4]; N],
    /// Samples in the window ending at the last sample (0 without samples).
    pub last_n: u64,
    /// Mean of each signal over that window.
    pub last_mean: [f64; N],
    /// Sample standard deviation of each signal over that window.
    pub last_stdev: [f64; N],
}

// Counts the drift risk of every row's window per signal, by the division-free test of
// `RollingWindow::risk`: `σ/|μ| > t` ⇔ `n·(n·S2 − S1²) > t²·(n·K + S1)²·(n − 1)`, and
// `μ < m` ⇔ `n·K + S1 < n·m`. The counts run in `f64` lanes (exact below 2⁵³ rows) so the
// loop vectorises.
#[derive(Debug, Clone)]
struct RiskSink<const N: usize> {
    // t² of the high threshold, and of the lower of the two (medium risk or above).
    high2: [f64; N],
    medium_up2: [f64; N],
    // Levels (−∞ without a rule on the level): high below the first, medium or above below the
    // higher of the two; and whether any signal has one.
    high_below: [f64; N],
    medium_up_below: [f64; N],
    levels: bool,
    min_samples: [u64; N],
    // Rows from which every signal has enough samples.
    all_enough: usize,
    rows: u64,
    insufficient: [u64; N],
    // Rows with enough samples at medium risk or above, and at high risk.
    medium_up: [f64; N],
    high: [f64; N],
}

impl<const N: usize> RiskSink<N> {
    fn new(t: &[DriftThresholds; N]) -> Self {
        let min_samples = t.map(|t| t.min_samples);
        let below = |l: Option<f64>| l.unwrap_or(f64::NEG_INFINITY);
        Self {
            high2: t.map(|t| t.volatility_high * t.volatility_high),
            medium_up2: t.map(|t| {
                let v = t.volatility_medium.min(t.volatility_high);
                v * v
            }),
            high_below: t.map(|t| below(t.mean_high_below)),
            medium_up_below: t.map(|t| below(t.mean_medium_below).max(below(t.mean_high_below))),
            levels: t
                .iter()
                .any(|t| t.mean_high_below.is_some() || t.mean_medium_below.is_some()),
            all_enough: min_samples
                .iter()
                .map(|&m| usize::try_from(m).unwrap_or(usize::MAX))
                .max()
                .unwrap_or(0),
            min_samples,
            rows: 0,
            insufficient: [0; N],
            medium_up: [0.0; N],
            high: [0.0; N],
        }
    }

    fn counts(&self) -> [[u64; 4]; N] {
        std::array::from_fn(|j| {
            let (i, m, h) = (
                self.insufficient[j],
                self.medium_up[j] as u64,
                self.high[j] as u64,
            );
            [i, self.rows - i - m, m - h, h]
        })
    }

    // Per signal 1 when the window is at high risk (else 0), and 1 when at medium risk or
    // above. With `rhs ≥ 0`, a higher threshold is passed only if the lower one is.
    #[inline(always)]
    fn classes(&self, n: usize, w: &Sums<N>) -> ([f64; N], [f64; N]) {
        let nf = as_f64(n);
        let (mut high, mut medium_up) = ([0.0; N], [0.0; N]);
        let one = |c: bool| if c { 1.0 } else { 0.0 };
        if self.levels {
            for j in 0..N {
                let nm = nf * w.k[j] + w.s1[j];
                let lhs = nf * (nf * w.s2[j] - w.s1[j] * w.s1[j]);
                let rhs = nm * nm * (nf - 1.0);
                high[j] = one((lhs > self.high2[j] * rhs) | (nm < nf * self.high_below[j]));
                medium_up[j] =
                    one((lhs > self.medium_up2[j] * rhs) | (nm < nf * self.medium_up_below[j]));
            }
        } else {
            for j in 0..N {
                let nm = nf * w.k[j] + w.s1[j];
                // A single sample has S1 = S2 = 0 exactly (its window starts again from it).
                let lhs = nf * (nf * w.s2[j] - w.s1[j] * w.s1[j]);
                let rhs = nm * nm * (nf - 1.0);
                high[j] = one(lhs > self.high2[j] * rhs);
                medium_up[j] = one(lhs > self.medium_up2[j] * rhs);
            }
        }
        (high, medium_up)
    }

    // A row where some signal has too few samples.
    #[inline(never)]
    fn few(&mut self, n: usize, w: &Sums<N>) {
        let (high, medium_up) = self.classes(n, w);
        for j in 0..N {
            if (n as u64) < self.min_samples[j] {
                self.insufficient[j] += 1;
            } else {
                self.high[j] += high[j];
                self.medium_up[j] += medium_up[j];
            }
        }
    }
}

impl<const N: usize> Sink<N> for RiskSink<N> {
    #[inline(always)]
    fn row(&mut self, _at: usize, n: usize, w: &Sums<N>) {
        self.rows += 1;
        if n < self.all_enough {
            return self.few(n, w);
        }
        let (high, medium_up) = self.classes(n, w);
        for j in 0..N {
            self.high[j] += high[j];
            self.medium_up[j] += medium_up[j];
        }
    }
}

// A count as `f64` by way of `i64`, which converts in one instruction on x86-64 (counts of rows
// are far below 2⁵³).
#[inline(always)]
fn as_f64(n: usize) -> f64 {
    n as i64 as f64
}

/// The fused kernel: for `N` signals sampled at the same times (`ts` sorted, values finite), the
/// drift risk of the window `(ts[i] − span, ts[i]]` of every sample `i` by the rules of each
/// signal's thresholds, counted per signal, and the mean and stdev of the last window — what
/// [`rolling_rows`](super::rolling_rows) followed by [`DriftThresholds::risk`] per sample and
/// signal would give, without writing the per-sample statistics. The risk is tested without
/// a division or square root, as [`RollingWindow::risk`](super::RollingWindow::risk) does; only a
/// volatility index within rounding of a threshold can fall on the other side. Runs on `threads`
/// threads (0: one per available core) with results identical to the bit whatever their number.
pub fn rolling_risk<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
    thresholds: &[DriftThresholds; N],
    threads: usize,
) -> Result<RollingRisk<N>, ColumnError> {
    let block = block_rows(ts, span.as_millis());
    risk_with_blocks(ts, rows, span, thresholds, threads, block)
}

pub(super) fn risk_with_blocks<const N: usize>(
    ts: &[i64],
    rows: &[[f64; N]],
    span: WindowSpan,
    thresholds: &[DriftThresholds; N],
    threads: usize,
    block: usize,
) -> Result<RollingRisk<N>, ColumnError> {
    if ts.len() != rows.len() {
        return Err(ColumnError::Length {
            ts: ts.len(),
            values: rows.len(),
        });
    }
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    let work = blocks(ts.len(), block)
        .into_iter()
        .map(|b| (b, RiskSink::new(thresholds)))
        .collect();
    let done = run_blocks(ts, rows, span.as_millis(), work, threads);
    if !done.iter().all(|d| d.2) {
        validate(ts, rows)?;
        debug_assert!(false, "a row failed a check that validate passed");
    }
    let mut counts = [[0u64; 4]; N];
    for (sink, _, _) in &done {
        for (total, c) in counts.iter_mut().zip(sink.counts()) {
            for (t, c) in total.iter_mut().zip(c) {
                *t += c;
            }
        }
    }
    let last = done.last().and_then(|d| d.1);
    let last_n = last.map_or(0, |w| ts.len() - w.lo);
    Ok(RollingRisk {
        counts,
        last_n: last_n as u64,
        last_mean: last.map_or([0.0; N], |w| w.mean(last_n)),
        last_stdev: last.map_or([0.0; N], |w| w.stdev(last_n)),
    })
}

// Keeps the count indices above in the order of `DriftRisk`.
const _: () = {
    assert!(DriftRisk::InsufficientData as usize == 0);
    assert!(DriftRisk::Low as usize == 1);
    assert!(DriftRisk::Medium as usize == 2);
    assert!(DriftRisk::High as usize == 3);
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{RollingWindow, WindowStats, rolling_rows};
    use super::*;
    use proptest::prelude::*;

    fn span(s: &str) -> WindowSpan {
        s.parse().unwrap()
    }

    // Times in whole seconds (so that equal times occur); two signals wandering around the
    // levels of the rules below with little noise, one of mixed scale with runs of equal values,
    // one with the odd outlier.
    fn series() -> impl Strategy<Value = (Vec<i64>, Vec<[f64; 4]>)> {
        (
            50f64..90.0,
            prop::collection::vec(
                (
                    0i64..12,
                    (-1.0f64..1.0, -1.5f64..1.5),
                    prop_oneof![Just(0.1f64), 1e5f64..1e5 + 1.0],
                    prop_oneof![9 => 0f64..1.0, 1 => Just(1e9)],
                ),
                1..260,
            ),
        )
            .prop_map(|(mut level, steps)| {
                let mut t = 0i64;
                steps
                    .into_iter()
                    .map(|(dt, (walk, noise), b, c)| {
                        t += dt * 1000;
                        level += walk;
                        (t, [level + noise, level - 5.0 - noise, b, c])
                    })
                    .unzip()
            })
    }

    // The coherence-score rules; rules out of order (high below medium, which `validate`
    // refuses but `risk` still applies: high wins); volatility only; wide bands with a small
    // minimum.
    fn thresholds() -> [DriftThresholds; 4] {
        [
            DriftThresholds::coherence_score(),
            DriftThresholds {
                volatility_medium: 0.03,
                volatility_high: 0.015,
                mean_high_below: Some(75.0),
                mean_medium_below: Some(65.0),
                min_samples: 10,
            },
            DriftThresholds::volatility_only(),
            DriftThresholds {
                volatility_medium: 0.75,
                volatility_high: 1.5,
                min_samples: 3,
                ..DriftThresholds::volatility_only()
            },
        ]
    }

    proptest! {
        #[test]
        fn blocks_on_any_number_of_threads_give_identical_results(
            (ts, rows) in series(),
            block in 1usize..40,
            threads in 2usize..5,
        ) {
            let w = span("30s");
            let mut one = RollingRows::default();
            let mut many = RollingRows::default();
            rows_with_blocks(&ts, &rows, w, &mut one, 1, block).unwrap();
            rows_with_blocks(&ts, &rows, w, &mut many, threads, block).unwrap();
            prop_assert_eq!(&one, &many);
            let t = thresholds();
            prop_assert_eq!(
                risk_with_blocks(&ts, &rows, w, &t, 1, block).unwrap(),
                risk_with_blocks(&ts, &rows, w, &t, threads, block).unwrap()
            );
        }

        #[test]
        fn blocked_rows_match_one_block_and_the_streaming_window(
            (ts, rows) in series(),
            block in 1usize..40,
        ) {
            let w = span("30s");
            let mut blocked = RollingRows::default();
            let mut whole = RollingRows::default();
            rows_with_blocks(&ts, &rows, w, &mut blocked, 2, block).unwrap();
            rows_with_blocks(&ts, &rows, w, &mut whole, 1, usize::MAX).unwrap();
            prop_assert_eq!(&blocked.n, &whole.n);
            for j in 0..4 {
                let mut s = RollingWindow::new(w);
                for (i, (&t, r)) in ts.iter().zip(&rows).enumerate() {
                    s.push(t, r[j]).unwrap();
                    let st = s.stats();
                    prop_assert_eq!(u64::from(blocked.n[i]), st.n);
                    for (m, sd) in [
                        (blocked.mean[i][j], blocked.stdev[i][j]),
                        (whole.mean[i][j], whole.stdev[i][j]),
                    ] {
                        prop_assert!((m - st.mean).abs() <= 1e-9 * (1.0 + st.mean.abs()));
                        prop_assert!(
                            (sd - st.stdev).abs() <= 1e-8 * (1.0 + st.stdev),
                            "row {} signal {}: {} vs {}", i, j, sd, st.stdev
                        );
                    }
                }
            }
        }

        #[test]
        fn fused_counts_match_the_risk_of_every_sample(
            (ts, rows) in series(),
            block in 1usize..40,
        ) {
            let w = span("30s");
            let t = thresholds();
            let stats = rolling_rows(&ts, &rows, w).unwrap();
            let mut counts = [[0u64; 4]; 4];
            let mut tie = false;
            for i in 0..ts.len() {
                for j in 0..4 {
                    let (mean, stdev) = (stats.mean[i][j], stats.stdev[i][j]);
                    let s = WindowStats {
                        window: w,
                        start_ms: 0,
                        end_ms: 0,
                        n: u64::from(stats.n[i]),
                        mean,
                        stdev,
                        volatility_index: crate::stats::volatility_index(mean, stdev),
                        rejected_non_finite: 0,
                        rejected_late: 0,
                    };
                    counts[j][t[j].risk(&s) as usize] += 1;
                    let near = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
                    let vi = s.volatility_index;
                    tie |= near(vi, t[j].volatility_high) || near(vi, t[j].volatility_medium);
                    let levels = [t[j].mean_high_below, t[j].mean_medium_below];
                    for level in levels.into_iter().flatten() {
                        tie |= near(mean, level);
                    }
                }
            }
            // A value within rounding of a threshold may fall on either side.
            prop_assume!(!tie);
            let fused = risk_with_blocks(&ts, &rows, w, &t, 2, block).unwrap();
            prop_assert_eq!(fused.counts, counts);
            let last = ts.len() - 1;
            prop_assert_eq!(fused.last_n, u64::from(stats.n[last]));
            for j in 0..4 {
                let (m, sd) = (stats.mean[last][j], stats.stdev[last][j]);
                prop_assert!((fused.last_mean[j] - m).abs() <= 1e-9 * (1.0 + m.abs()));
                prop_assert!((fused.last_stdev[j] - sd).abs() <= 1e-8 * (1.0 + sd));
            }
        }
    }

    #[test]
    fn blocks_hold_four_windows_of_rows() {
        let hour = span("1h").as_millis();
        let every_10s: Vec<i64> = (0..100_000).map(|i| i * 10_000).collect();
        assert_eq!(block_rows(&every_10s, hour), BLOCK_ROWS);
        // 3,600 rows per window: 14,400 rounded up to a power of two.
        let every_s: Vec<i64> = (0..100_000).map(|i| i * 1000).collect();
        assert_eq!(block_rows(&every_s, hour), 16_384);
        // Dense only at the end.
        let mut late_burst = every_10s.clone();
        late_burst.extend((1..=50_000).map(|i| 1_000_000_000 + i));
        assert_eq!(block_rows(&late_burst, hour), 262_144);
        assert_eq!(block_rows(&[], hour), BLOCK_ROWS);
    }

    #[test]
    fn bad_rows_are_named_whichever_thread_finds_them() {
        let w = span("1m");
        let ts: Vec<i64> = (0..100).map(|i| i * 1000).collect();
        let rows = vec![[1.0, 2.0]; 100];
        let t = [DriftThresholds::default(); 2];
        let mut out = RollingRows::default();
        rows_with_blocks(&ts, &rows, w, &mut out, 3, 7).unwrap();
        assert_eq!(out.n.len(), 100);
        let mut late = ts.clone();
        late[71] = 70_500;
        late[90] = 10;
        assert_eq!(
            rows_with_blocks(&late, &rows, w, &mut out, 3, 7),
            Err(ColumnError::Unsorted(90))
        );
        assert!(out.n.is_empty() && out.mean.is_empty() && out.stdev.is_empty());
        let mut nan = rows.clone();
        nan[64][1] = f64::NAN;
        nan[80][0] = f64::INFINITY;
        assert_eq!(
            rows_with_blocks(&ts, &nan, w, &mut out, 2, 7),
            Err(ColumnError::NonFinite(64))
        );
        assert_eq!(
            risk_with_blocks(&ts, &nan, w, &t, 2, 7),
            Err(ColumnError::NonFinite(64))
        );
        assert_eq!(
            rolling_risk(&late, &rows, w, &t, 2),
            Err(ColumnError::Unsorted(90))
        );
        assert_eq!(
            rolling_rows_par_into(&ts[1..], &rows, w, &mut out, 2),
            Err(ColumnError::Length {
                ts: 99,
                values: 100
            })
        );
        let empty = rolling_risk::<2>(&[], &[], w, &t, 2).unwrap();
        assert_eq!((empty.counts, empty.last_n), ([[0; 4]; 2], 0));
    }

    #[test]
    fn equal_values_whose_mean_is_inexact_are_not_recomputed_at_every_row() {
        // 50 rows of 0.1, then an outlier: when it leaves, the sums are recomputed around the
        // exact mean of the 0.1s, which does not come out as 0.1.
        let mut rows = vec![[0.1, 1.0 / 3.0]; 400];
        rows[60] = [1e6, 1e6];
        let ts: Vec<i64> = (0..400).collect();
        let mut w = Sums::exact(&rows, 0, 0);
        let mut longest = 0;
        for i in 1..rows.len() {
            w.step(&ts, &rows, i, i as i64 - 50);
            if i > 120 {
                longest = longest.max(w.evicted);
            }
        }
        assert!(
            longest > 50,
            "at most {longest} rows between recomputations"
        );
        assert_eq!(w.stdev(50), [0.0; 2]);
    }
}
