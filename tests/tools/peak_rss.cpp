// peak_rss CMD [ARGS...]: runs CMD and prints its peak resident set size in KiB on the last line of
// stderr ("peak_rss_kib N"), passing stdout through and exiting with CMD's status.
//
// Measuring from Python directly is wrong: a child forked from a large process (Python with torch
// loaded) inherits the parent's resident pages until exec, and Linux keeps that high-water mark in the
// child's ru_maxrss. This program is small, so what it forks starts clean.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: peak_rss CMD [ARGS...]\n");
    return 2;
  }
  pid_t pid = fork();
  if (pid < 0) return 127;
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    std::perror("exec");
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) < 0) return 127;
  std::fprintf(stderr, "peak_rss_kib %ld\n", usage.ru_maxrss);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
