/* An LD_PRELOAD shim for stress/power-cut.sh: records every change that processes make to the
 * files of one folder, and every sync of them, in one log, so that the state of the folder as
 * of a power cut can be rebuilt afterwards (replay.py): a write reaches the "disk" only if an
 * fsync/fdatasync of the same file began after the write had returned, and that sync returned.
 * The real writes still happen (the processes see their own files as usual); only the replay
 * drops what a power cut would.
 *
 * POWERCUT_DIR: the folder whose files are recorded (an absolute path, no trailing slash).
 * POWERCUT_LOG: the log, appended to by every process with one write(2) per record (O_APPEND
 * keeps records whole and in one order across processes).
 *
 * Record: u32 total length, u8 kind, u32 path length, path, i64 offset/size, data.
 * Kinds: 'W' data written at offset; 'T' truncated to size; 'B' sync began and 'E' it ended
 * (offset: a token pairing them);
 * 'U' unlinked; 'O' opened with O_TRUNC (size 0).
 *
 * Device-mapper (dm-flakey, dm-log-writes) is not available in this kernel (no
 * /dev/mapper/control), hence this shim. It sees libc calls only: SQLite writes its database
 * and write-ahead log with write/pwrite64 (its -shm file is memory-mapped and not recorded; it
 * holds nothing durable and SQLite rebuilds it after a crash).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAXFD 4096

static char *paths[MAXFD];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static const char *dir;
static size_t dir_len;
static int ready;
static uint32_t syncs;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_unlink)(const char *);

static void init(void) {
    if (ready) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_close = dlsym(RTLD_NEXT, "close");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    dir = getenv("POWERCUT_DIR");
    const char *log = getenv("POWERCUT_LOG");
    if (dir && log) {
        dir_len = strlen(dir);
        log_fd = real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    }
    ready = 1;
}

static void record(char kind, const char *path, int64_t offset, const void *data, size_t len) {
    if (log_fd < 0 || !path) return;
    uint32_t plen = (uint32_t)strlen(path);
    uint32_t total = 4 + 1 + 4 + plen + 8 + (uint32_t)len;
    char *buf = malloc(total);
    if (!buf) abort();
    char *p = buf;
    memcpy(p, &total, 4); p += 4;
    *p++ = kind;
    memcpy(p, &plen, 4); p += 4;
    memcpy(p, path, plen); p += plen;
    memcpy(p, &offset, 8); p += 8;
    if (len) memcpy(p, data, len);
    /* One write: whole and ordered among all processes (O_APPEND on a local file). */
    if (real_write(log_fd, buf, total) != (ssize_t)total) abort();
    free(buf);
}

static const char *traced(int fd) {
    if (fd < 0 || fd >= MAXFD) return NULL;
    return paths[fd];
}

static void remember(int fd, const char *path, int flags) {
    if (fd < 0 || fd >= MAXFD || !dir) return;
    char full[PATH_MAX];
    if (path[0] != '/') {
        if (!getcwd(full, sizeof full)) return;
        size_t n = strlen(full);
        if (n + 1 + strlen(path) + 1 > sizeof full) return;
        full[n] = '/';
        strcpy(full + n + 1, path);
    } else {
        if (strlen(path) + 1 > sizeof full) return;
        strcpy(full, path);
    }
    if (strncmp(full, dir, dir_len) != 0 || full[dir_len] != '/') return;
    pthread_mutex_lock(&lock);
    free(paths[fd]);
    paths[fd] = strdup(full);
    pthread_mutex_unlock(&lock);
    if (flags & O_TRUNC) record('O', full, 0, NULL, 0);
}

static int open_common(int fd, const char *path, int flags) {
    if (fd >= 0) remember(fd, path, flags);
    return fd;
}

int open(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }
    return open_common(real_open(path, flags, mode), path, flags);
}

int open64(const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }
    return open_common(real_open64(path, flags, mode), path, flags);
}

int openat(int at, const char *path, int flags, ...) {
    init();
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }
    int fd = real_openat(at, path, flags, mode);
    if (at == AT_FDCWD || path[0] == '/') open_common(fd, path, flags);
    return fd;
}

int openat64(int at, const char *path, int flags, ...) __attribute__((alias("openat")));

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAXFD && paths[fd]) {
        pthread_mutex_lock(&lock);
        free(paths[fd]);
        paths[fd] = NULL;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    const char *path = traced(fd);
    if (!path) return real_write(fd, buf, n);
    off_t at = lseek(fd, 0, SEEK_CUR);
    ssize_t done = real_write(fd, buf, n);
    if (done > 0) {
        /* O_APPEND or not, the data ends where the offset now is. */
        off_t end = lseek(fd, 0, SEEK_CUR);
        record('W', path, end >= 0 ? end - done : at, buf, (size_t)done);
    }
    return done;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    init();
    ssize_t done = real_pwrite64(fd, buf, n, offset);
    const char *path = traced(fd);
    if (path && done > 0) record('W', path, offset, buf, (size_t)done);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) __attribute__((alias("pwrite64")));

ssize_t writev(int fd, const struct iovec *iov, int count) {
    init();
    const char *path = traced(fd);
    if (!path) return real_writev(fd, iov, count);
    off_t at = lseek(fd, 0, SEEK_CUR);
    ssize_t done = real_writev(fd, iov, count);
    if (done > 0) {
        size_t left = (size_t)done;
        for (int i = 0; i < count && left; i++) {
            size_t part = iov[i].iov_len < left ? iov[i].iov_len : left;
            record('W', path, at, iov[i].iov_base, part);
            at += (off_t)part;
            left -= part;
        }
    }
    return done;
}

static int sync_common(int fd, int (*real)(int)) {
    init();
    const char *path = traced(fd);
    char copy[PATH_MAX];
    /* Pairs this sync's end with its beginning, among the syncs of all processes. */
    int64_t token = ((int64_t)getpid() << 32) | (int64_t)__atomic_add_fetch(&syncs, 1, __ATOMIC_RELAXED);
    if (path) { strncpy(copy, path, sizeof copy - 1); copy[sizeof copy - 1] = 0; record('B', copy, token, NULL, 0); }
    int rc = real(fd);
    if (path && rc == 0) record('E', copy, token, NULL, 0);
    return rc;
}

int fsync(int fd) { init(); return sync_common(fd, real_fsync); }
int fdatasync(int fd) { init(); return sync_common(fd, real_fdatasync); }

int ftruncate(int fd, off_t size) {
    init();
    int rc = real_ftruncate(fd, size);
    const char *path = traced(fd);
    if (path && rc == 0) record('T', path, size, NULL, 0);
    return rc;
}

int ftruncate64(int fd, off_t size) __attribute__((alias("ftruncate")));

int unlink(const char *path) {
    init();
    int rc = real_unlink(path);
    if (rc == 0 && dir && strncmp(path, dir, dir_len) == 0) record('U', path, 0, NULL, 0);
    return rc;
}
