/* thread_pool.h: pyllm's portable thread pool (pthreads + C11 atomics, no OpenMP, no Python).
 * pl_par_run(nth, fn, arg) runs fn on nth threads (the caller is thread 0, persistent workers the
 * rest); inside fn, pl_par_barrier waits for all of them, and the loop helpers split 0..n-1 over the
 * threads statically (a contiguous block each, or round-robin), dynamically or guided (a shared
 * counter the barrier resets). Waiting spins for a bounded time, then sleeps (futex on Linux, a
 * condition variable elsewhere), so a short decode step does not pay for sleeping and a thread
 * whose partner was descheduled does not burn the partner's core (where both were last seen on
 * one CPU it sleeps at once). */
#ifndef PYLLM_THREAD_POOL_H
#define PYLLM_THREAD_POOL_H

#include <stdint.h>

typedef struct pl_team pl_team;

/* one thread's view of a parallel run: its index ith in 0..nth-1 */
typedef struct {
    pl_team *team;
    int ith, nth;
} pl_par;

typedef void (*pl_par_fn)(pl_par *p, void *arg);

/* Runs fn(p, arg) on nth threads and returns when all have returned (nth <= 1: on the calling
 * thread only). Safe to call from several threads at once (each call gets its own team of workers)
 * and after fork (the child starts new workers). Where threads cannot be started it runs on one
 * thread: every caller in pyllm computes the same result for any thread count. */
void pl_par_run(int nth, pl_par_fn fn, void *arg);

/* every thread of the run waits here until all have arrived (also resets the dynamic counter) */
void pl_par_barrier(pl_par *p);

/* static split (the first n % nth threads take one item more): this thread's [lo, hi) */
static inline int64_t pl_par_lo(const pl_par *p, int64_t n) {
    const int64_t q = n / p->nth, r = n % p->nth;
    return p->ith * q + (p->ith < r ? p->ith : r);
}
static inline int64_t pl_par_hi(const pl_par *p, int64_t n) {
    const int64_t q = n / p->nth, r = n % p->nth;
    return (p->ith + 1) * q + (p->ith + 1 < r ? p->ith + 1 : r);
}
/* for (i = this thread's contiguous share of 0..n-1); follow with pl_par_barrier where the next
 * step reads what other threads wrote */
#define PL_PAR_FOR(p, i, n) for (int64_t i = pl_par_lo(p, n), i##_hi_ = pl_par_hi(p, n); i < i##_hi_; i++)
/* round-robin: items ith, ith + nth, ... */
#define PL_PAR_FOR_STRIDED(p, i, n) for (int64_t i = (p)->ith; i < (int64_t)(n); i += (p)->nth)

/* Dynamic and guided splits of 0..n-1 over a counter shared by the run's threads: each call hands
 * this thread its next [*lo, *hi) and returns 1, or 0 when all items are taken. Dynamic takes
 * `chunk` items at a time; guided takes ceil(left / nth) (long runs first, ever shorter ones). All
 * threads must run the loop to its end, then meet at pl_par_barrier before the next such loop. */
int pl_par_dynamic(pl_par *p, int64_t n, int64_t chunk, int64_t *lo, int64_t *hi);
int pl_par_guided(pl_par *p, int64_t n, int64_t *lo, int64_t *hi);

/* the threads this process may use (its CPU affinity where the system tells it), at least 1 */
int pl_default_threads(void);

/* Test hook: runs nth threads over n items with every split (static, strided, dynamic, guided)
 * and barriers between phases; returns the number of errors found (an item taken twice or never, a
 * barrier that let a thread see a partner's earlier write missing) and sets *distinct to the number of
 * distinct OS threads that ran items of the static split. */
int pl_par_selftest(int nth, int64_t n, int *distinct);

/* Spin times before a waiting thread sleeps, in microseconds: at a barrier (default PL_PAR_SPIN_US)
 * and a worker waiting for its next job (PL_PAR_JOB_SPIN_US); cpu_check: a thread that was last
 * seen on the same CPU as a partner sleeps at once (default 1, Linux only). For benchmarks; a
 * negative value leaves that setting as it is. Returns the previous barrier spin. */
#define PL_PAR_SPIN_US 5
#define PL_PAR_JOB_SPIN_US 100
int pl_par_spin_us(int us, int job_us, int cpu_check);

#endif
