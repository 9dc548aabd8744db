/* thread_pool.c: the thread pool behind pl_par_run (see thread_pool.h): teams of persistent
 * pthreads kept in a process-wide list, a job handed to a team through a generation counter,
 * a counting barrier, the shared loop counter, and the spin-then-sleep wait both use. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getaffinity, syscall */
#endif
#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#define CACHE_LINE 64

/* a 32-bit word threads wait on until it changes, and how many of them sleep on it */
typedef struct {
    _Alignas(CACHE_LINE) atomic_uint v;
    atomic_int sleepers;
#ifndef __linux__
    pthread_mutex_t mu;
    pthread_cond_t cv;
#endif
} wait_word;

struct pl_team {
    wait_word job;        /* bumped once per job (and to tell the workers to quit) */
    wait_word bar;        /* bumped when the last thread reaches a barrier */
    _Alignas(CACHE_LINE) atomic_int bar_count;
    _Alignas(CACHE_LINE) atomic_llong counter; /* the dynamic / guided loops' next item */
    _Alignas(CACHE_LINE) pl_par_fn fn;          /* the job: written before job.v is bumped */
    void *arg;
    int nth;              /* 1 + n_workers */
    int n_workers;
    int quit;
    int busy;             /* taken by a pl_par_run (under g_mu) */
    atomic_int *cpu;      /* per thread: the CPU it ran on when it last reached a barrier, or -1 */
    pthread_t *threads;
    struct pl_team *next; /* the process's list of teams */
};

typedef struct {
    pl_team *team;
    int ith;
} worker_arg;

/* spin times before sleeping: at a barrier, and a worker waiting for its next job; whether a thread
 * that shares its CPU with a partner it waits for sleeps at once */
static atomic_int g_spin_us = PL_PAR_SPIN_US, g_job_spin_us = PL_PAR_JOB_SPIN_US, g_cpu_check = 1;

int pl_par_spin_us(int us, int job_us, int cpu_check) {
    const int old = atomic_load(&g_spin_us);
    if (us >= 0) atomic_store(&g_spin_us, us);
    if (job_us >= 0) atomic_store(&g_job_spin_us, job_us);
    if (cpu_check >= 0) atomic_store(&g_cpu_check, cpu_check);
    return old;
}

/* the CPU this thread runs on (-1 where the system does not say) */
static int current_cpu(void) {
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

/* 1 when another thread of the team was last seen on the CPU this one runs on: spinning would only
 * keep that thread, which this one waits for, off the CPU */
static int shares_cpu(const pl_team *T, int ith) {
    if (!T->cpu || !atomic_load_explicit(&g_cpu_check, memory_order_relaxed)) return 0;
    const int me = current_cpu();
    if (me < 0) return 0;
    atomic_store_explicit(&T->cpu[ith], me, memory_order_relaxed);
    for (int j = 0; j < T->nth; j++)
        if (j != ith && atomic_load_explicit(&T->cpu[j], memory_order_relaxed) == me) return 1;
    return 0;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void word_init(wait_word *w) {
    atomic_init(&w->v, 0);
    atomic_init(&w->sleepers, 0);
#ifndef __linux__
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
#endif
}

static void word_destroy(wait_word *w) {
#ifndef __linux__
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
#else
    (void)w;
#endif
}

/* Returns once w->v != old: spins (bounded by the spin time), then sleeps. The sleeper count and
 * the value are both sequentially consistent, so a waker either sees the sleeper or the sleeper
 * sees the new value before it sleeps. */
static void word_wait(wait_word *w, unsigned old, const atomic_int *spin_us, int no_spin) {
    if (atomic_load_explicit(&w->v, memory_order_acquire) != old) return;
    const uint64_t spin = no_spin ? 0 : (uint64_t)atomic_load_explicit(spin_us, memory_order_relaxed) * 1000u;
    uint64_t t0 = 0;
    for (unsigned i = 1; spin; i++) {
        cpu_relax();
        if (atomic_load_explicit(&w->v, memory_order_acquire) != old) return;
        if ((i & 31) == 0) {
            const uint64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 >= spin) break;
        }
    }
    atomic_fetch_add(&w->sleepers, 1);
#ifdef __linux__
    while (atomic_load(&w->v) == old)
        syscall(SYS_futex, (uint32_t *)&w->v, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
#else
    pthread_mutex_lock(&w->mu);
    while (atomic_load(&w->v) == old) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
#endif
    atomic_fetch_sub(&w->sleepers, 1);
    atomic_thread_fence(memory_order_acquire);
}

/* sets w->v to a new value and wakes its sleepers */
static void word_bump(wait_word *w) {
    atomic_fetch_add(&w->v, 1);
    if (atomic_load(&w->sleepers) > 0) {
#ifdef __linux__
        syscall(SYS_futex, (uint32_t *)&w->v, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
        pthread_mutex_lock(&w->mu);
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
#endif
    }
}

void pl_par_barrier(pl_par *p) {
    pl_team *T = p->team;
    if (p->nth <= 1) {
        atomic_store_explicit(&T->counter, 0, memory_order_relaxed);
        return;
    }
    const unsigned gen = atomic_load_explicit(&T->bar.v, memory_order_acquire);
    /* the CPU is noted before arriving, so the last one in has seen every waiter's */
    const int no_spin = shares_cpu(T, p->ith);
    if (atomic_fetch_add_explicit(&T->bar_count, 1, memory_order_acq_rel) == p->nth - 1) {
        /* the last one in: every other thread waits for gen to change, so nobody uses these now */
        atomic_store_explicit(&T->bar_count, 0, memory_order_relaxed);
        atomic_store_explicit(&T->counter, 0, memory_order_relaxed);
        word_bump(&T->bar);
    } else {
        word_wait(&T->bar, gen, &g_spin_us, no_spin);
    }
}

int pl_par_dynamic(pl_par *p, int64_t n, int64_t chunk, int64_t *lo, int64_t *hi) {
    if (chunk < 1) chunk = 1;
    const int64_t i = atomic_fetch_add_explicit(&p->team->counter, chunk, memory_order_relaxed);
    if (i >= n) return 0;
    *lo = i;
    *hi = n - i < chunk ? n : i + chunk;
    return 1;
}

int pl_par_guided(pl_par *p, int64_t n, int64_t *lo, int64_t *hi) {
    long long cur = atomic_load_explicit(&p->team->counter, memory_order_relaxed);
    for (;;) {
        if (cur >= n) return 0;
        const int64_t take = (n - cur + p->nth - 1) / p->nth;
        if (atomic_compare_exchange_weak_explicit(&p->team->counter, &cur, cur + take, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *lo = cur;
            *hi = cur + take;
            return 1;
        }
    }
}

/* ------------------------------------------------------------------------------------------ teams */

static void *worker_main(void *varg) {
    worker_arg a = *(worker_arg *)varg;
    free(varg);
    pl_team *T = a.team;
    pl_par p = {T, a.ith, T->nth};
    unsigned seen = 0; /* the team was made with job.v == 0 */
    for (;;) {
        word_wait(&T->job, seen, &g_job_spin_us, shares_cpu(T, p.ith));
        seen = atomic_load_explicit(&T->job.v, memory_order_acquire);
        if (T->quit) return NULL;
        T->fn(&p, T->arg);
        pl_par_barrier(&p); /* the job's end: after it nothing of the job is read */
    }
}

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pl_team *g_teams; /* every team of this process, busy or idle */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void team_free(pl_team *T) {
    word_destroy(&T->job);
    word_destroy(&T->bar);
    free(T->cpu);
    free(T->threads);
    free(T);
}

/* stops and joins an idle team's workers */
static void team_stop(pl_team *T) {
    T->quit = 1;
    word_bump(&T->job);
    for (int i = 0; i < T->n_workers; i++) pthread_join(T->threads[i], NULL);
    team_free(T);
}

/* a team of nth - 1 workers, or NULL where the system would not start them */
static pl_team *team_new(int nth) {
    pl_team *T;
    if (posix_memalign((void **)&T, CACHE_LINE, sizeof(pl_team))) return NULL;
    memset(T, 0, sizeof(*T));
    word_init(&T->job);
    word_init(&T->bar);
    atomic_init(&T->bar_count, 0);
    atomic_init(&T->counter, 0);
    T->nth = nth;
    T->cpu = NULL;
    T->threads = malloc(sizeof(pthread_t) * (size_t)(nth - 1));
    T->cpu = malloc(sizeof(atomic_int) * (size_t)nth);
    if (!T->threads || !T->cpu) {
        team_free(T);
        return NULL;
    }
    for (int i = 0; i < nth; i++) atomic_init(&T->cpu[i], -1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)8 << 20); /* as a main thread's (macOS gives 512 KB) */
    /* workers block every signal: Python's handlers run on its main thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int ok = 1;
    for (int i = 0; i < nth - 1; i++) {
        worker_arg *a = malloc(sizeof(worker_arg));
        if (!a) {
            ok = 0;
            break;
        }
        a->team = T;
        a->ith = i + 1;
        if (pthread_create(&T->threads[i], &attr, worker_main, a)) {
            free(a);
            ok = 0;
            break;
        }
        T->n_workers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (!ok) {
        team_stop(T);
        return NULL;
    }
    return T;
}

/* at exit: the idle teams' workers are stopped and joined (a team still running a job, from a
 * thread the interpreter did not wait for, is left to the process's end) */
static void at_exit(void) {
    pthread_mutex_lock(&g_mu);
    pl_team **pp = &g_teams;
    while (*pp) {
        pl_team *T = *pp;
        if (T->busy) {
            pp = &T->next;
            continue;
        }
        *pp = T->next;
        team_stop(T);
    }
    pthread_mutex_unlock(&g_mu);
}

/* fork: no team is being made or taken while the process forks; the child has none of the parent's
 * workers, so it forgets their teams (their memory is left as it is) and makes its own */
static void fork_prepare(void) { pthread_mutex_lock(&g_mu); }
static void fork_parent(void) { pthread_mutex_unlock(&g_mu); }
static void fork_child(void) {
    g_teams = NULL;
    pthread_mutex_unlock(&g_mu); /* held by this thread since fork_prepare */
}

static void once_init(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    atexit(at_exit);
}

/* idle teams kept for other thread counts: beyond this the oldest is stopped when a new one is made
 * (a program calling with many thread counts does not pile up sleeping workers) */
#define MAX_IDLE_TEAMS 4

/* an idle team of nth threads, marked busy (a new one if none is idle), or NULL */
static pl_team *team_take(int nth) {
    pthread_once(&g_once, once_init);
    pthread_mutex_lock(&g_mu);
    pl_team *T = g_teams;
    while (T && (T->busy || T->nth != nth)) T = T->next;
    if (!T) {
        /* the list is newest first: stop the oldest idle teams past the limit */
        int idle = 0;
        for (pl_team **pp = &g_teams; *pp;) {
            pl_team *U = *pp;
            if (!U->busy && ++idle >= MAX_IDLE_TEAMS) {
                *pp = U->next;
                team_stop(U);
                continue;
            }
            pp = &U->next;
        }
        T = team_new(nth);
        if (T) {
            T->next = g_teams;
            g_teams = T;
        }
    }
    if (T) T->busy = 1;
    pthread_mutex_unlock(&g_mu);
    return T;
}

static void team_give_back(pl_team *T) {
    pthread_mutex_lock(&g_mu);
    T->busy = 0;
    pthread_mutex_unlock(&g_mu);
}

static void run_alone(pl_par_fn fn, void *arg) {
    pl_team solo;
    memset(&solo, 0, sizeof(solo));
    atomic_init(&solo.counter, 0);
    pl_par p = {&solo, 0, 1};
    fn(&p, arg);
}

void pl_par_run(int nth, pl_par_fn fn, void *arg) {
    pl_team *T = nth > 1 ? team_take(nth) : NULL;
    if (!T) {
        run_alone(fn, arg);
        return;
    }
    T->fn = fn;
    T->arg = arg;
    atomic_store_explicit(&T->counter, 0, memory_order_relaxed);
    word_bump(&T->job); /* release: the workers read fn / arg after seeing it */
    pl_par p = {T, 0, nth};
    fn(&p, arg);
    pl_par_barrier(&p);
    team_give_back(T);
}

int pl_default_threads(void) {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------------------------------------------- self-test */

typedef struct {
    int64_t n;
    atomic_int *hits;       /* per item: how many times it was taken in the current phase */
    pthread_t *owner;       /* per thread index: the OS thread that ran its static share */
    int *ran;               /* per thread index: it ran at least one static item */
    atomic_int *slot;       /* per thread index: a value written before a barrier */
    atomic_int errors;
} selftest_job;

static void selftest_check(pl_par *p, selftest_job *J) {
    /* every item taken exactly once in the phase just done, then zeroed for the next one */
    pl_par_barrier(p);
    PL_PAR_FOR(p, i, J->n) {
        if (atomic_load(&J->hits[i]) != 1) atomic_fetch_add(&J->errors, 1);
        atomic_store(&J->hits[i], 0);
    }
    pl_par_barrier(p);
}

static void selftest_fn(pl_par *p, void *arg) {
    selftest_job *J = arg;
    PL_PAR_FOR(p, i, J->n) {
        atomic_fetch_add(&J->hits[i], 1);
        J->owner[p->ith] = pthread_self();
        J->ran[p->ith] = 1;
    }
    selftest_check(p, J);
    PL_PAR_FOR_STRIDED(p, i, J->n) atomic_fetch_add(&J->hits[i], 1);
    selftest_check(p, J);
    int64_t lo, hi;
    while (pl_par_dynamic(p, J->n, 3, &lo, &hi))
        for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&J->hits[i], 1);
    selftest_check(p, J);
    while (pl_par_guided(p, J->n, &lo, &hi))
        for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&J->hits[i], 1);
    selftest_check(p, J);
    /* barriers: in round r each thread writes r into its slot, and after the barrier sees every
     * other thread's r (none may still hold r - 1 or be ahead at r + 1) */
    for (int r = 1; r <= 200; r++) {
        atomic_store_explicit(&J->slot[p->ith], r, memory_order_relaxed);
        pl_par_barrier(p);
        for (int j = 0; j < p->nth; j++)
            if (atomic_load_explicit(&J->slot[j], memory_order_relaxed) != r) atomic_fetch_add(&J->errors, 1);
        pl_par_barrier(p);
    }
}

int pl_par_selftest(int nth, int64_t n, int *distinct) {
    *distinct = 0;
    if (nth < 1 || n < 0) return -1;
    selftest_job J;
    J.n = n;
    J.hits = calloc((size_t)n + 1, sizeof(atomic_int));
    J.owner = calloc((size_t)nth, sizeof(pthread_t));
    J.ran = calloc((size_t)nth, sizeof(int));
    J.slot = calloc((size_t)nth, sizeof(atomic_int));
    atomic_init(&J.errors, 0);
    if (!J.hits || !J.owner || !J.ran || !J.slot) {
        free(J.hits), free(J.owner), free(J.ran), free(J.slot);
        return -1;
    }
    pl_par_run(nth, selftest_fn, &J);
    for (int i = 0; i < nth; i++) {
        if (!J.ran[i]) continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = J.ran[j] && pthread_equal(J.owner[i], J.owner[j]);
        *distinct += !seen;
    }
    const int errors = atomic_load(&J.errors);
    free(J.hits), free(J.owner), free(J.ran), free(J.slot);
    return errors;
}
