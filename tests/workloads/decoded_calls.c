/* The calls the decoded-records test compares with strace's own text: a known set, each
 * once, with known arguments. `decoded_calls child A B` is what it execs itself as: it
 * returns at once. `decoded_calls long-path`, `big-write` and `many-args` make the calls
 * whose data is longer than a session keeps; `decoded_calls wait-stdin` reads a byte from
 * stdin before its calls (for a session started while it waits). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_PORT 47311
#define CLOSED_PORT 47312
#define OUT "/tmp/tracerd-decoded.out"
#define SOCK "/tmp/tracerd-decoded.sock"

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

static int calls(const char *self) {
    char buf[64];
    int fd = openat(AT_FDCWD, "/etc/hostname", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, buf, 32) < 0) return 1;
        close(fd);
    }
    openat(AT_FDCWD, "/nonexistent/tracerd-decoded", O_RDONLY);
    int out = openat(AT_FDCWD, OUT, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) return 1;
    if (write(out, "hello tracerd\n", 14) != 14) return 1;
    if (write(out, "a line longer than thirty-two bytes, cut\n", 41) != 41) return 1;
    if (write(out, "tab\there \"quoted\" \\ \001\377\n", 24) != 24) return 1;
    close(out);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in listen_addr = loopback(LISTEN_PORT);
    if (bind(listener, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) return 1;
    listen(listener, 4);
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) return 1;
    struct sockaddr_in peer;
    socklen_t peer_len = sizeof peer;
    int accepted = accept4(listener, (struct sockaddr *)&peer, &peer_len, SOCK_CLOEXEC);
    if (accepted < 0) return 1;
    close(accepted);
    int refused = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in closed_addr = loopback(CLOSED_PORT);
    connect(refused, (struct sockaddr *)&closed_addr, sizeof closed_addr);
    close(refused);
    close(client);
    close(listener);

    unlink(SOCK);
    int unix_socket = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un unix_addr;
    memset(&unix_addr, 0, sizeof unix_addr);
    unix_addr.sun_family = AF_UNIX;
    strcpy(unix_addr.sun_path, SOCK);
    if (bind(unix_socket, (struct sockaddr *)&unix_addr, sizeof unix_addr) != 0) return 1;
    close(unix_socket);
    unlink(SOCK);

    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return 1;
    mprotect(page, 4096, PROT_READ);

    signal(SIGUSR1, SIG_IGN);
    kill(getpid(), SIGUSR1);

    char *const argv[] = {"decoded_calls", "child", "two words", NULL};
    char *const envp[] = {"A=1", "B=2", "C=3", NULL};
    execve(self, argv, envp);
    return 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) return 0;
    if (argc > 1 && strcmp(argv[1], "wait-stdin") == 0) {
        char go;
        if (read(0, &go, 1) != 1) return 1;
        return calls(argv[0]);
    }
    if (argc > 1 && strcmp(argv[1], "long-path") == 0) {
        char path[301];
        memset(path, 'p', 300);
        path[0] = '/';
        path[300] = 0;
        return openat(AT_FDCWD, path, O_RDONLY) < 0 ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "big-write") == 0) {
        size_t size = 1 << 20;
        char *data = malloc(size);
        memset(data, 'w', size);
        int fd = openat(AT_FDCWD, "/dev/null", O_WRONLY);
        return write(fd, data, size) == (ssize_t)size ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "many-args") == 0) {
        char *args[102];
        args[0] = "decoded_calls";
        args[1] = "child";
        for (int i = 2; i < 101; i++) args[i] = "arg";
        args[101] = NULL;
        char *const envp[] = {NULL};
        execve(argv[0], args, envp);
        return 1;
    }
    return calls(argv[0]);
}
