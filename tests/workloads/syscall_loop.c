/*
 * A deterministic syscall workload for tracerd's tests and benchmarks.
 *
 *   syscall_loop OP COUNT [OP COUNT ...]
 *
 * makes exactly COUNT calls of each OP, in order, through syscall(2) so libc adds nothing:
 *   getppid        getppid()
 *   getpid         getpid()
 *   openat-missing openat(AT_FDCWD, "/nonexistent/tracerd-workload", O_RDONLY, 0644), which
 *                  fails (the mode, a fourth argument, lets tests check every argument register)
 *   write-null     write() of 1 byte to /dev/null (opened once, before the loop)
 *   openat-long    openat() of a missing path 300 bytes long (longer than tracerd keeps)
 *   openat-null    openat() with a NULL path, which fails with EFAULT
 *   slow-getppid   getppid() then a 5 ms nanosleep(), COUNT times (a low, steady rate)
 *   pause-stdin    read() COUNT bytes from standard input, one at a time (lets a test learn
 *                  the pid before the measured work starts)
 *   cgroup-hop     COUNT times: make a child cgroup of the cgroup2 directory named by
 *                  SYSCALL_LOOP_CGROUP (the one the process is in), move into it, call
 *                  getppid() once, move back and remove the child
 *
 * With SYSCALL_LOOP_TIMING=1 in the environment it prints `loop_ns=N` to stderr: the time
 * the ops took, read from the vDSO clock (no syscall), for benchmarks that must not count
 * process start-up or a tracer's own start-up.
 *
 * It is linked statically so it runs in any container image. Exit status 0 on success,
 * 2 on bad usage, 1 if a call that must succeed fails.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Moves the calling process into the cgroup2 directory `dir`. */
static int join_cgroup(const char *dir) {
    char procs[4096];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, procs, O_WRONLY);
    if (fd < 0) return 1;
    long written = syscall(SYS_write, fd, "0", 1);
    syscall(SYS_close, fd);
    return written == 1 ? 0 : 1;
}

static int cgroup_hop(long count) {
    const char *parent = getenv("SYSCALL_LOOP_CGROUP");
    if (!parent) {
        fprintf(stderr, "syscall_loop: cgroup-hop needs SYSCALL_LOOP_CGROUP\n");
        return 2;
    }
    char child[4096];
    for (long i = 0; i < count; i++) {
        snprintf(child, sizeof child, "%s/hop-%ld-%ld", parent, (long)getpid(), i);
        if (mkdir(child, 0755) != 0) return 1;
        if (join_cgroup(child) != 0) return 1;
        syscall(SYS_getppid);
        if (join_cgroup(parent) != 0) return 1;
        if (rmdir(child) != 0) return 1;
    }
    return 0;
}

static int run(const char *op, long count) {
    if (strcmp(op, "getppid") == 0) {
        for (long i = 0; i < count; i++) syscall(SYS_getppid);
    } else if (strcmp(op, "getpid") == 0) {
        for (long i = 0; i < count; i++) syscall(SYS_getpid);
    } else if (strcmp(op, "openat-missing") == 0) {
        for (long i = 0; i < count; i++)
            syscall(SYS_openat, AT_FDCWD, "/nonexistent/tracerd-workload", O_RDONLY, 0644);
    } else if (strcmp(op, "write-null") == 0) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, "/dev/null", O_WRONLY);
        if (fd < 0) return 1;
        for (long i = 0; i < count; i++)
            if (syscall(SYS_write, fd, "x", 1) != 1) return 1;
        syscall(SYS_close, fd);
    } else if (strcmp(op, "openat-long") == 0) {
        char path[301];
        memset(path, 'a', sizeof path - 1);
        memcpy(path, "/nonexistent/", 13);
        path[sizeof path - 1] = '\0';
        for (long i = 0; i < count; i++) syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    } else if (strcmp(op, "openat-null") == 0) {
        for (long i = 0; i < count; i++) syscall(SYS_openat, AT_FDCWD, NULL, O_RDONLY);
    } else if (strcmp(op, "slow-getppid") == 0) {
        struct timespec pause = {0, 5 * 1000 * 1000};
        for (long i = 0; i < count; i++) {
            syscall(SYS_getppid);
            syscall(SYS_nanosleep, &pause, NULL);
        }
    } else if (strcmp(op, "pause-stdin") == 0) {
        char byte;
        for (long i = 0; i < count; i++)
            if (syscall(SYS_read, 0, &byte, 1) != 1) return 1;
    } else if (strcmp(op, "cgroup-hop") == 0) {
        return cgroup_hop(count);
    } else {
        fprintf(stderr, "syscall_loop: unknown op %s\n", op);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc % 2 == 0) {
        fprintf(stderr, "usage: syscall_loop OP COUNT [OP COUNT ...]\n");
        return 2;
    }
    const char *timing = getenv("SYSCALL_LOOP_TIMING");
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 1; i + 1 < argc; i += 2) {
        char *end;
        long count = strtol(argv[i + 1], &end, 10);
        if (*end != '\0' || count < 0) {
            fprintf(stderr, "syscall_loop: bad count %s\n", argv[i + 1]);
            return 2;
        }
        int status = run(argv[i], count);
        if (status != 0) return status;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (timing && strcmp(timing, "1") == 0) {
        long long ns = (long long)(end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
        fprintf(stderr, "loop_ns=%lld\n", ns);
    }
    return 0;
}
