# Stateful Python for containerized-agent: one long-lived interpreter per sandbox (workspace).
#
# Run as `python3 -I -S -c <this file> CODE_FILE RESULT_FILE` in the workspace by a stateful
# `python` step (agent_core::agent::step documents the host side). This process is the step's
# *client*, and it is on every stateful step's critical path: it imports nothing but built-in
# modules (`posix`, `_socket`; no site, no `socket`, `json` or `os` packages, which would cost
# more than the step itself).
#
# 1. It connects to the sandbox's kernel, a daemon listening on an abstract Unix socket named
#    after the uid and the workspace; when there is none, it starts one (double fork, own session,
#    then an exec of a normal `python3 -c <this file> --kernel ADDRESS`, so the code runs with
#    site-packages and the usual flags) and waits until it answers.
# 2. It hands the kernel its own stdout and stderr (SCM_RIGHTS) and the code's file name. The
#    kernel runs the code in its one namespace with fds 1 and 2 pointing at the client's, so output
#    streams as a normal step's would, subprocesses included.
# 3. The kernel answers one JSON line: ok, the repr of the value of a final expression, the error,
#    the files the code created or changed in the workspace and how many steps it has run. The
#    client writes it to RESULT_FILE and exits 0 (ok) or 1.
#
# The kernel ends with its client: when the client dies before the answer (its step timed out or
# was cancelled and its process group was killed), the kernel exits, so the next step starts a
# new interpreter and its answer says so (steps == 1). Code that ends the interpreter itself
# (os._exit, a crash) gives an answer with "lost": true from the client.
import posix
import sys

MAX_VALUE = 8192  # bytes of a value's repr kept
MAX_FILES = 100  # changed files listed
MAX_SCAN = 20000  # workspace entries looked at per scan
LOST = (
    b'{"ok": false, "lost": true, "error": '
    b'"the Python interpreter exited during this step; its state was lost"}'
)


def address():
    """The name of the kernel's abstract socket (without its leading NUL, so it can be an
    argument): the uid and an FNV-1a hash of the workspace's path."""
    ws = posix.getcwd().encode()
    h = 0x811C9DC5
    for b in ws:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return "agent-pykernel-%d-%08x-%d" % (posix.getuid(), h, len(ws))


# ---------------------------------------------------------------------------------------------
# The kernel (a normal interpreter: imports cost it nothing after its first step)
# ---------------------------------------------------------------------------------------------


def scan():
    """(path, mtime_ns, size) of regular files under the workspace, .agent/ excluded."""
    import os

    seen = {}
    stack = ["."]
    n = 0
    while stack and n < MAX_SCAN:
        d = stack.pop()
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for e in entries:
                n += 1
                rel = e.path[2:]
                try:
                    if e.is_dir(follow_symlinks=False):
                        if rel != ".agent":
                            stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        seen[rel] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    pass
    return seen


def run(code_file, ns, state):
    import ast
    import traceback

    before = scan()
    answer = {"ok": True, "value": None, "error": None}
    try:
        with open(code_file, "rb") as f:
            src = f.read()
        tree = ast.parse(src, filename=code_file)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, code_file, "exec"), ns)
        if last is not None:
            value = eval(compile(last, code_file, "eval"), ns)
            if value is not None:
                text = repr(value)
                if len(text) > MAX_VALUE:
                    text = text[:MAX_VALUE] + "... (%d characters in all)" % len(text)
                answer["value"] = text
    except SystemExit as e:
        answer["ok"] = e.code in (None, 0)
        if not answer["ok"]:
            answer["error"] = "SystemExit: %r" % (e.code,)
    except BaseException as e:
        answer["ok"] = False
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != code_file:
            tb = tb.tb_next  # the kernel's own frames are no business of the code's
        traceback.print_exception(type(e), e, tb)
        answer["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    after = scan()
    changed = sorted(p for p, v in after.items() if before.get(p) != v)
    answer["files"] = changed[:MAX_FILES]
    answer["files_truncated"] = len(changed) > MAX_FILES
    state["steps"] += 1
    answer["steps"] = state["steps"]
    return answer


def serve(listener):
    import _thread
    import json
    import os
    import socket

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    state = {"steps": 0}
    null = os.open(os.devnull, os.O_RDWR)
    ws = os.getcwd()
    home = os.stat(ws)
    listener.settimeout(2)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            # Outside a container (tests), the workspace may be removed under us: end with it.
            try:
                now = os.stat(ws)
            except OSError:
                os._exit(0)
            if (now.st_dev, now.st_ino) != (home.st_dev, home.st_ino):
                os._exit(0)
            continue
        conn.settimeout(None)
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 2)
        except OSError:
            conn.close()
            continue
        if len(fds) != 2 or not msg:
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        done = [False]

        def watch(c=conn, done=done):
            # The client died before the answer: end with it (its step was killed).
            try:
                while c.recv(1):
                    pass
            except OSError:
                pass
            if not done[0]:
                os._exit(137)

        _thread.start_new_thread(watch, ())
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        answer = run(msg.decode(), ns, state)
        os.dup2(null, 1)
        os.dup2(null, 2)
        done[0] = True
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def kernel(addr):
    """The kernel's process: listens at `addr` (one that loses the race to bind just exits)."""
    import os
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + addr)
    except OSError:
        os._exit(0)
    listener.listen(8)
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = [""]
    try:
        serve(listener)
    except BaseException:
        pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# The client (python3 -I -S: built-in modules only)
# ---------------------------------------------------------------------------------------------


def own_source():
    """This file's text: the argument after -c on our command line."""
    argv = getattr(sys, "orig_argv", None)
    if argv is None:  # before Python 3.10
        fd = posix.open("/proc/self/cmdline", posix.O_RDONLY)
        try:
            raw = b""
            while True:
                chunk = posix.read(fd, 1 << 16)
                if not chunk:
                    break
                raw += chunk
        finally:
            posix.close(fd)
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
    return argv[argv.index("-c") + 1]


def start_kernel(addr):
    """Starts a kernel daemon listening at `addr`: a grandchild in a session of its own, with
    /dev/null for its standard streams (the step's pipes must not stay open in it)."""
    source = own_source()
    pid = posix.fork()
    if pid:
        posix.waitpid(pid, 0)
        return
    try:
        posix.setsid()
        if posix.fork():
            posix._exit(0)
        null = posix.open("/dev/null", posix.O_RDWR)
        for fd in (0, 1, 2):
            posix.dup2(null, fd)
        posix.close(null)
        posix.execv(sys.executable, [sys.executable, "-c", source, "--kernel", addr])
    except BaseException:
        pass
    posix._exit(0)


def connect(addr):
    import _socket
    import time

    deadline = time.monotonic() + 30
    started = False
    while True:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect("\0" + addr)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
        if not started:
            start_kernel(addr)
            started = True
        else:
            time.sleep(0.005)


def client(code_file, result_file):
    import _socket

    addr = address()
    conn = connect(addr)
    path = code_file if code_file.startswith("/") else posix.getcwd() + "/" + code_file
    fds = (1).to_bytes(4, sys.byteorder) + (2).to_bytes(4, sys.byteorder)
    conn.sendmsg([path.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.endswith(b"\n"):
        answer = data[:-1]
    else:
        answer = LOST
        posix.write(2, b"the Python interpreter exited during this step; its state was lost\n")
    fd = posix.open(result_file, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC, 0o644)
    try:
        while answer:
            answer = answer[posix.write(fd, answer):]
    finally:
        posix.close(fd)
    # The kernel's answer starts with its "ok" field (run() makes it first).
    posix._exit(0 if data.startswith(b'{"ok": true') else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kernel"]:
        kernel(sys.argv[2])
    else:
        client(sys.argv[1], sys.argv[2])
