"""Run native work on untrusted input in child processes, with a time limit and bounded output.

A worker hands bytes from the network to concrete-python's native code. Malformed bytes can keep
that code busy for minutes, make it write millions of log lines to stderr, or segfault it, and a
segfault in the server process takes every client down with it. :class:`IsolatedRunner` runs such
calls in a small pool of long-lived child processes, so a crash or a stall costs one request an
:class:`IsolatedTaskError` and the worker keeps serving.

How it works:

- Children are started with the ``multiprocessing`` "spawn" context (a fresh interpreter: no
  forked copy of the server's threads, locks or native state). A child imports this package and,
  when a task arrives, the task function's module; caches kept in that module (loaded circuits,
  keys) persist from one call to the next on the same child. As always with spawn, the child also
  imports the parent's main module when that is a script (as ``__mp_main__``): a script that
  creates a runner at import time needs the ``if __name__ == "__main__":`` guard.
- Tasks and results travel pickled over a ``multiprocessing`` pipe; tens of MB are fine.
- Output: native code writes to file descriptors 1 and 2, not through Python's ``logging``. A child
  points both at one pipe whose other end a parent thread drains without pause into a buffer that
  keeps only the last ``max_log_bytes`` bytes of the current task, so a flood of any size costs a
  few copies of each chunk and is never held whole, in memory or on disk. After each task the child
  writes a random end marker into that pipe, which tells the parent where one task's output ends.
  Output of successful tasks is dropped; after a failed task one WARNING record on the logger
  ``veilml.isolation`` (at most 2 KB) quotes the tail.
- A timeout kills the child (SIGKILL); a dead child (signal, ``os._exit``) is reaped. Either way the
  slot starts a new child on its next use.
- Children ignore SIGINT (Ctrl-C is the parent's to handle) and die with the parent: on Linux
  through ``PR_SET_PDEATHSIG``, elsewhere through a thread that watches ``os.getppid()``. Because
  Linux sends that signal when the *thread* that started the child ends, children are always
  started from one long-lived thread of the runner, not from short-lived request threads.

This is fault isolation, not a security sandbox: children run as the same user as the server and
their replies are unpickled by it.
"""

from veilml._isolation.runner import Failure, IsolatedRunner, IsolatedTaskError

__all__ = ["Failure", "IsolatedRunner", "IsolatedTaskError"]
